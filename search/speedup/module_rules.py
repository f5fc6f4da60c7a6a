"""Channel rules for leaf modules (Conv, Linear, norms, Embedding, activations, pooling...)."""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from search.speedup.analyze import Analyzer, Fold
from search.speedup.graph import Value
from search.speedup.layout_rules import _reshape, rearrange_channels
from search.speedup.rules import along_axis, spatial, unary

__all__ = ["module_rule", "linear_like", "ELEMENTWISE_MODULES", "SHRINKABLE_MODULES"]

ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.Tanhshrink,
    nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity,
)
SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d, nn.LPPool1d, nn.LPPool2d,
)
CONST_KEEPING_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
    nn.ReplicationPad2d, nn.ReplicationPad3d,
)
#: Module types whose parameters speedup knows how to slice (attributes updated to match).
SHRINKABLE_MODULES = (
    nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.PReLU, nn.RNNBase,
)


def _zero(t: torch.Tensor | None, n: int) -> np.ndarray:
    return np.ones(n, dtype=bool) if t is None else (t.detach() == 0).cpu().numpy().reshape(-1)


def module_rule(an: Analyzer, node: fx.Node) -> bool:
    name = str(node.target)
    m = an.modules[name]
    opaque = _opaque(m)
    if opaque is not None:
        an.unknown(node, f"{opaque} {name} ({type(m).__name__})")
        return True
    x = an.value_of(node.args[0]) if node.args else None
    if isinstance(m, nn.Linear):
        if not isinstance(x, Value):
            return False
        return linear_like(an, node, x, an.param(name, "weight"), an.param(name, "bias"), m.weight.detach(),
                           None if m.bias is None else m.bias.detach(),
                           fold_into=name if an.call_counts.get(name, 0) == 1 else None)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return _conv_transpose(an, node, m, x)
    if isinstance(m, nn.modules.conv._ConvNd):
        return _conv(an, node, m, x)
    if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm):
        return _channel_norm(an, node, m, x)
    if isinstance(m, nn.LayerNorm):
        return _layer_norm(an, node, m, x)
    if isinstance(m, nn.GroupNorm):
        return _group_norm(an, node, m, x)
    if isinstance(m, nn.Embedding):
        return _embedding(an, node, m, x)
    if isinstance(m, nn.PReLU):
        return _prelu(an, node, m, x)
    if isinstance(m, nn.RNNBase):
        return _rnn(an, node, m, x)
    if isinstance(m, nn.Flatten | nn.Unflatten):
        return _reshape(an, node)
    if isinstance(m, nn.PixelShuffle):
        return rearrange_channels(an, node, node.args[0], "pixel_shuffle", m.upscale_factor)
    if isinstance(m, nn.PixelUnshuffle):
        return rearrange_channels(an, node, node.args[0], "pixel_unshuffle", m.downscale_factor)
    if isinstance(m, nn.ChannelShuffle):
        return rearrange_channels(an, node, node.args[0], "channel_shuffle", m.groups)
    if isinstance(m, nn.Softmax | nn.LogSoftmax) and m.dim is not None:
        return along_axis(an, node, node.args[0], m.dim, False, type(m).__name__)
    if isinstance(m, SPATIAL_MODULES):
        zero_keeping = not isinstance(m, nn.modules.padding._ConstantPadNd) or getattr(m, "value", 0) == 0
        keeps_const = isinstance(m, CONST_KEEPING_MODULES)
        return spatial(an, node, zero_keeping=zero_keeping, const_keeping=keeps_const)
    if isinstance(m, ELEMENTWISE_MODULES) and isinstance(x, Value) and len(node.args) == 1:
        return unary(an, node, node.args[0])  # type: ignore[arg-type]
    return False


def _opaque(m: nn.Module) -> str | None:
    """Why ``m`` does not compute what its type says (its weight is not its parameter), if it does not.

    A parametrization (``weight_norm``, ``spectral_norm``) or a forward pre-hook (the old
    ``weight_norm``, ``torch.nn.utils.prune``) computes the weight from other tensors on every call:
    slicing it would change nothing, or the wrong thing.
    """
    if parametrize.is_parametrized(m):
        return "parametrized weights of"
    if m._forward_pre_hooks:
        return "forward pre-hook of"
    return None


def linear_like(
    an: Analyzer,
    node: fx.Node,
    x: Value,
    w: Value | None,
    b: Value | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    fold_into: str | None = None,
) -> bool:
    out_shape = an.shape_of(node)
    if out_shape is None or w is None or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        return False
    out = an.new(node)
    nd = x.ndim
    for a in range(nd - 1):
        an.g.link(x, a, out, a)
    an.g.link(w, 0, out, nd - 1)
    an.g.link(w, 1, x, nd - 1)
    if b is not None:
        an.g.link(b, 0, out, nd - 1)
    bias_zero = _zero(bias, weight.shape[0])
    pairs = an.pairs(w, weight)
    row_zero = ~pairs.rows_reading(~x.zero[-1])
    out.zero[-1] = row_zero & bias_zero
    for a in range(nd - 1):
        out.zero[a] = x.zero[a] & bool(bias_zero.all())
    c = x.constants(nd - 1)
    known = ~np.isnan(c)
    if known.any():
        row_ok = ~pairs.rows_reading(~known)
        bvec = np.zeros(weight.shape[0]) if bias is None else bias.double().cpu().numpy()
        live = known & (c != 0)  # zero constants add nothing
        contrib = np.zeros(weight.shape[0])
        rows = np.nonzero(row_ok & pairs.rows_reading(live))[0]  # rows that read a non-zero constant
        if rows.size:
            block = weight[torch.from_numpy(rows)][:, torch.from_numpy(np.nonzero(live)[0])].double().cpu()
            contrib[rows] = (block @ torch.from_numpy(c[live])).numpy()
        out.const[-1] = np.where(row_ok, bvec + contrib, np.nan)
    if fold_into is not None:
        an.folds.append(Fold(fold_into, x, nd - 1))

    def back() -> None:
        col_zero = ~pairs.cols_read_by(~out.ignored[-1])
        if fold_into is not None:
            col_zero = col_zero | ~np.isnan(x.constants(nd - 1))
        an.use(x, nd - 1, col_zero)
        for a in range(nd - 1):
            an.use(x, a, out.ignored[a])

    an.on_backward(back)
    return True


def _channel_axis(x: Value, weight: torch.Tensor) -> int:
    return 1 if x.ndim == weight.dim() else 0


def _conv(an: Analyzer, node: fx.Node, m: nn.modules.conv._ConvNd, x: Value | None) -> bool:
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None:
        return False
    name = str(node.target)
    weight = m.weight.detach()
    bias = None if m.bias is None else m.bias.detach()
    cax = _channel_axis(x, weight)
    out = an.new(node)
    w, b = an.param(name, "weight"), an.param(name, "bias")
    assert w is not None
    if cax == 1:
        an.g.link(x, 0, out, 0)
    cin, cout, groups = x.shape[cax], out_shape[cax], m.groups
    bias_zero = _zero(bias, cout)
    an.g.link(w, 0, out, cax)
    if b is not None:
        an.g.link(b, 0, out, cax)
    # One pass over the weight: which (out, in) kernel slices are non-zero.
    pairs = an.pairs(w, weight)
    w_row_zero = ~pairs.row_any
    if cax == 1:
        out.zero[0] = x.zero[0] & bool(bias_zero.all())
    bvec = np.zeros(cout) if bias is None else bias.detach().double().cpu().numpy()
    no_pad = _constant_safe(m)
    can_fold = no_pad and an.call_counts.get(name, 0) == 1  # a shared module has one bias for all calls
    if groups == 1:
        an.g.link(w, 1, x, cax)
        only_bias = ~pairs.rows_reading(~x.zero[cax])
        out.zero[cax] = only_bias & bias_zero
        c = x.constants(cax)
        known = ~np.isnan(c)
        out.const[cax] = np.where(only_bias, bvec, np.nan)
        if no_pad and known.any():
            row_ok = ~pairs.rows_reading(~known)
            live = known & (c != 0)  # zero constants add nothing
            rows = np.nonzero(row_ok & pairs.rows_reading(live))[0]  # rows that read a non-zero constant
            if rows.size:
                cols = torch.from_numpy(np.nonzero(live)[0])
                block = weight[torch.from_numpy(rows)][:, cols].double().flatten(2).sum(dim=2).cpu()
                contrib = np.zeros(cout)
                contrib[rows] = (block @ torch.from_numpy(c[live])).numpy()
                out.const[cax] = np.where(row_ok, bvec + contrib, out.const[cax])
            else:
                out.const[cax] = np.where(row_ok, bvec, out.const[cax])
        if can_fold:
            an.folds.append(Fold(name, x, cax))

        def back() -> None:
            col_zero = ~pairs.cols_read_by(~out.ignored[cax])
            if can_fold:
                col_zero = col_zero | ~np.isnan(x.constants(cax))
            an.use(x, cax, col_zero)
            _use_rest(an, x, out, cax)

    elif groups == cin and cout % cin == 0:
        k = cout // cin
        mapping = np.arange(cout) // k
        an.g.link(x, cax, out, cax, mapping)
        out.zero[cax] = (w_row_zero | x.zero[cax][mapping]) & bias_zero
        out.const[cax] = np.where(w_row_zero | x.zero[cax][mapping], bvec, np.nan)
        cin_const = x.constants(cax)[mapping]
        if no_pad and bool((~np.isnan(cin_const) & (cin_const != 0)).any()):
            wsum = weight.double().flatten(1).sum(dim=1).cpu().numpy()
            out.const[cax] = np.where(np.isnan(cin_const), out.const[cax], bvec + wsum * np.nan_to_num(cin_const))
        elif no_pad:
            out.const[cax] = np.where(np.isnan(cin_const), out.const[cax], bvec)

        def back() -> None:
            verdict = (out.ignored[cax] | w_row_zero).reshape(cin, k).all(axis=1)
            an.use(x, cax, verdict)
            _use_rest(an, x, out, cax)

    else:
        reason = f"grouped convolution {name} (groups={groups})"
        an.g.pin(x, cax, reason)
        an.g.pin(out, cax, reason)
        out.zero[cax] = w_row_zero & bias_zero

        def back() -> None:
            an.use(x, cax, Analyzer.all_ignored(out))
            _use_rest(an, x, out, cax)

    an.on_backward(back)
    return True


def _constant_safe(m: nn.modules.conv._ConvNd) -> bool:
    """A constant input channel gives a constant output channel (no zero padding at borders)."""
    if m.padding_mode != "zeros":
        return True
    pad = m.padding
    return pad == "valid" or (isinstance(pad, tuple | list) and all(p == 0 for p in pad)) or (
        pad == "same" and all(k == 1 for k in m.kernel_size)
    )


def _use_rest(an: Analyzer, x: Value, out: Value, cax: int) -> None:
    if cax == 1:
        an.use(x, 0, out.ignored[0])
    every = Analyzer.all_ignored(out)
    for a in range(cax + 1, x.ndim):
        an.use(x, a, every)


def _conv_transpose(an: Analyzer, node: fx.Node, m: nn.modules.conv._ConvTransposeNd, x: Value | None) -> bool:
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None:
        return False
    name = str(node.target)
    weight = m.weight.detach()
    bias = None if m.bias is None else m.bias.detach()
    cax = _channel_axis(x, weight)
    out = an.new(node)
    w, b = an.param(name, "weight"), an.param(name, "bias")
    assert w is not None
    if cax == 1:
        an.g.link(x, 0, out, 0)
    cout = out_shape[cax]
    bias_zero = _zero(bias, cout)
    if m.groups != 1:
        reason = f"grouped transposed convolution {name}"
        an.g.pin(x, cax, reason)
        an.g.pin(out, cax, reason)
        an.on_backward(lambda: (an.use(x, cax, Analyzer.all_ignored(out)), _use_rest(an, x, out, cax)))
        return True
    an.g.link(w, 0, x, cax)
    an.g.link(w, 1, out, cax)
    if b is not None:
        an.g.link(b, 0, out, cax)
    nz_in = torch.from_numpy(~x.zero[cax])
    out.zero[cax] = (weight[nz_in] == 0).transpose(0, 1).flatten(1).all(dim=1).cpu().numpy() & bias_zero
    if cax == 1:
        out.zero[0] = x.zero[0] & bool(bias_zero.all())

    def back() -> None:
        live = torch.from_numpy(~out.ignored[cax])
        an.use(x, cax, (weight[:, live] == 0).flatten(1).all(dim=1).cpu().numpy())
        _use_rest(an, x, out, cax)

    an.on_backward(back)
    return True


def _identity_links(an: Analyzer, x: Value, out: Value) -> None:
    for a in range(x.ndim):
        an.g.link(x, a, out, a)


def _small(t: torch.Tensor) -> np.ndarray:
    """A norm's per-channel vector as float32 NumPy."""
    return t.detach().float().cpu().numpy().astype(np.float32, copy=False)


def _channel_norm(an: Analyzer, node: fx.Node, m: nn.Module, x: Value | None) -> bool:
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None or tuple(out_shape) != x.shape:
        return False
    name = str(node.target)
    cax = 1 if x.ndim >= 2 else 0
    out = an.new(node)
    _identity_links(an, x, out)
    c = x.shape[cax]
    for attr in ("weight", "bias", "running_mean", "running_var"):
        p = an.param(name, attr)
        if p is not None and p.shape == (c,):
            an.g.link(p, 0, out, cax)
    weight = getattr(m, "weight", None)
    bias = getattr(m, "bias", None)
    # float32 arithmetic as the module does it (NumPy: these vectors are small, torch's per-call cost dominates)
    w = np.ones(c, dtype=np.float32) if weight is None else _small(weight)
    bsh = np.zeros(c, dtype=np.float32) if bias is None else _small(bias)
    rm, rv = getattr(m, "running_mean", None), getattr(m, "running_var", None)
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and rm is not None and rv is not None:
        scale = w / np.sqrt(_small(rv) + np.float32(m.eps))
        shift = bsh - _small(rm) * scale
    else:  # batch/instance statistics: a zero slice normalises to zero
        scale, shift = w, bsh
    scale_zero = scale == 0
    shift_zero = shift == 0
    out.zero[cax] = (scale_zero & shift_zero) | (x.zero[cax] & shift_zero)
    sc, sh = scale.astype(np.float64), shift.astype(np.float64)
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and rm is not None:
        out.const[cax] = np.where(scale_zero, sh, x.constants(cax) * sc + sh)
    else:  # per-instance statistics: a constant slice normalises to zero
        out.const[cax] = np.where(scale_zero | ~np.isnan(x.constants(cax)), sh, np.nan)
    for a in range(x.ndim):
        if a != cax:
            out.zero[a] = x.zero[a] & bool(shift_zero.all())

    def back() -> None:
        an.use(x, cax, out.ignored[cax] | scale_zero)
        for a in range(x.ndim):
            if a != cax:
                an.use(x, a, out.ignored[a])

    an.on_backward(back)
    return True


def _layer_norm(an: Analyzer, node: fx.Node, m: nn.LayerNorm, x: Value | None) -> bool:
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None or tuple(out_shape) != x.shape:
        return False
    name = str(node.target)
    k = len(m.normalized_shape)
    normed = list(range(x.ndim - k, x.ndim))
    out = an.new(node)
    _identity_links(an, x, out)
    for a in normed:
        an.g.pin(x, a, f"LayerNorm {name} normalises over this axis")
    for attr in ("weight", "bias"):
        p = an.param(name, attr)
        if p is not None:
            for i, a in enumerate(normed):
                an.g.link(p, i, out, a)
    b = m.bias.detach() if m.bias is not None else None
    w = m.weight.detach() if m.weight is not None else None
    if k == 1:
        wz = np.zeros(x.shape[-1], dtype=bool) if w is None else (w == 0).cpu().numpy()
        out.zero[-1] = wz & _zero(b, x.shape[-1])
    bias_all_zero = b is None or bool((b == 0).all())
    for a in range(x.ndim - k):
        out.zero[a] = x.zero[a] & bias_all_zero

    def back() -> None:
        every = Analyzer.all_ignored(out)
        for a in range(x.ndim):
            an.use(x, a, every if a in normed else out.ignored[a])

    an.on_backward(back)
    return True


def _group_norm(an: Analyzer, node: fx.Node, m: nn.GroupNorm, x: Value | None) -> bool:
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None or x.ndim < 2:
        return False
    name = str(node.target)
    out = an.new(node)
    _identity_links(an, x, out)
    an.g.pin(x, 1, f"GroupNorm {name} statistics span its channel groups")
    for attr in ("weight", "bias"):
        p = an.param(name, attr)
        if p is not None:
            an.g.link(p, 0, out, 1)
    if m.affine:
        out.zero[1] = (m.weight.detach() == 0).cpu().numpy() & (m.bias.detach() == 0).cpu().numpy()
    for a in range(x.ndim):
        if a != 1:
            out.zero[a] = x.zero[a] & (not m.affine or bool((m.bias == 0).all()))

    def back() -> None:
        every = Analyzer.all_ignored(out)
        for a in range(x.ndim):
            an.use(x, a, every if a == 1 else out.ignored[a])

    an.on_backward(back)
    return True


def _embedding(an: Analyzer, node: fx.Node, m: nn.Embedding, x: Value | None) -> bool:
    out_shape = an.shape_of(node)
    if not isinstance(x, Value) or out_shape is None or len(out_shape) != x.ndim + 1:
        return False
    out = an.new(node)
    for a in range(x.ndim):
        an.g.link(x, a, out, a)
    w = an.param(str(node.target), "weight")
    assert w is not None
    an.g.link(w, 1, out, x.ndim)
    out.zero[x.ndim] = (m.weight.detach() == 0).all(dim=0).cpu().numpy()

    def back() -> None:
        for a in range(x.ndim):
            an.use(x, a, out.ignored[a])

    an.on_backward(back)
    return True


def _prelu(an: Analyzer, node: fx.Node, m: nn.PReLU, x: Value | None) -> bool:
    if not isinstance(x, Value):
        return False
    if m.num_parameters == 1:
        return unary(an, node, node.args[0])  # type: ignore[arg-type]
    out = an.new(node)
    _identity_links(an, x, out)
    p = an.param(str(node.target), "weight")
    if p is not None and x.ndim >= 2:
        an.g.link(p, 0, out, 1)
    for a in range(x.ndim):
        out.zero[a] = x.zero[a].copy()
    an.on_backward(lambda: [an.use(x, a, out.ignored[a]) for a in range(x.ndim)])
    return True


def _rnn(an: Analyzer, node: fx.Node, m: nn.RNNBase, x: Value | None) -> bool:
    """LSTM / GRU / RNN: input features are the columns of the first layer's input weights.

    Only those columns can go (with the input features they read); the hidden size feeds the
    gates and every later step, so outputs and states keep all their positions.
    """
    result = an.concrete(node)
    if not isinstance(x, Value) or not isinstance(result, tuple) or len(node.args) + len(node.kwargs) > 1:
        return False
    name = str(node.target)
    reason = f"recurrent hidden state of {name} ({type(m).__name__})"
    an._new_structure(node, result, reason)  # (output, h) or, for an LSTM, (output, (h, c))
    feature = x.ndim - 1
    weights = [w for w in (an.param(name, "weight_ih_l0"), an.param(name, "weight_ih_l0_reverse")) if w is not None]
    for w in weights:
        an.g.link(w, 1, x, feature)
    read = np.zeros(x.shape[feature], dtype=bool)
    for suffix in ("", "_reverse"):
        weight = getattr(m, "weight_ih_l0" + suffix, None)
        if isinstance(weight, torch.Tensor):
            read |= (weight.detach() != 0).any(dim=0).cpu().numpy()
    for a in range(feature):
        an.g.pin(x, a, reason)

    def back() -> None:
        an.use(x, feature, ~read)
        for a in range(feature):
            an.use(x, a, False)

    an.on_backward(back)
    return True

