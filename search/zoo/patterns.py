"""Small graph-pattern models for testing speedup and export.

Each model isolates one way channels are coupled (concatenation, groups, residual adds,
broadcast multiplies, reshapes, attention heads, shared modules...) or one way tracing gets
hard (Python control flow, operators speedup has no rule for). Every model ends in a layer
named ``head`` (the classifier a channel pruner should leave alone), is deterministic (seeded
initialisation, trained-looking norm parameters and statistics) and small enough to run in
milliseconds. These models are not registered in the zoo registry: use the factories here,
each of which returns ``(model, dummy_input)`` with the model in eval mode.

Example:
    >>> from search.zoo.patterns import PATTERNS, residual_net
    >>> model, x = residual_net()
    >>> model(x).shape
    torch.Size([1, 4, 16, 16])
    >>> sorted(PATTERNS)[:4]
    ['attention', 'attention_sdpa', 'attention_size_scale', 'channel_shuffle']
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PATTERNS",
    "AttentionNet",
    "ChannelShuffleNet",
    "ConcatNet",
    "Conv1dNet",
    "ConvTransposeNet",
    "DepthwiseNet",
    "EmbeddingNet",
    "FPNNet",
    "FlattenLinearNet",
    "GroupNormNet",
    "GroupedConvNet",
    "LayerNormMLP",
    "PixelShuffleNet",
    "RecurrentNet",
    "ResidualNet",
    "SENet",
    "SharedModuleNet",
    "TextCNN",
    "UNetSkip",
    "UnknownOpNet",
    "UntraceableNet",
    "attention_net",
    "channel_shuffle_net",
    "concat_net",
    "conv1d_net",
    "conv_transpose_net",
    "depthwise_net",
    "embedding_net",
    "flatten_linear_net",
    "fpn_net",
    "group_norm_net",
    "grouped_conv_net",
    "layer_norm_mlp",
    "pixel_shuffle_net",
    "recurrent_net",
    "residual_net",
    "se_net",
    "shared_module_net",
    "text_cnn",
    "unet_skip",
    "unknown_op_net",
    "untraceable_net",
]


def _image(channels: int = 3, size: int = 16, batch: int = 1) -> Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(0))


def _finish(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded weights, trained-looking norm parameters and statistics, eval mode.

    A freshly built BatchNorm is an identity; here its weight, bias and running statistics are
    random, as after training, so a masked convolution's channel leaves the BN as a non-zero
    constant unless the BN is masked too (pruners do that with ``align_norms=True``).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / max(1, m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                assert m.running_mean is not None and m.running_var is not None
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            elif isinstance(m, nn.LayerNorm | nn.GroupNorm) and m.weight is not None:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def _conv_bn_relu(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False, groups=groups), nn.BatchNorm2d(cout), nn.ReLU())


# -- concatenation / groups -----------------------------------------------------------------------------------


class ConcatNet(nn.Module):
    """Two conv branches concatenated on channels, then a conv over the concatenation.

    Channel ``i`` of ``branch_b`` is channel ``8 + i`` of the concatenation, so pruning either
    branch must remove the matching input channels of ``fuse``.

    Example:
        >>> ConcatNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 4, 16, 16])
    """

    def __init__(self) -> None:
        super().__init__()
        self.branch_a = nn.Conv2d(3, 8, 3, padding=1)
        self.branch_b = nn.Conv2d(3, 12, 1)
        self.fuse = nn.Conv2d(20, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([F.relu(self.branch_a(x)), F.relu(self.branch_b(x))], dim=1)
        return self.head(F.relu(self.fuse(y)))


class GroupedConvNet(nn.Module):
    """A ``groups=2`` convolution between two dense ones.

    Speedup keeps the grouped convolution's channels (input and output) and prunes the rest.

    Example:
        >>> GroupedConvNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 4, 16, 16])
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 16, 3, padding=1, groups=2)
        self.pointwise = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.grouped(x))
        return self.head(F.relu(self.pointwise(x)))


class DepthwiseNet(nn.Module):
    """MobileNet-style depthwise + pointwise blocks, the second with channel multiplier 2.

    A depthwise convolution's output channel ``i`` (``i * k ... i * k + k - 1`` with multiplier
    ``k``) reads only input channel ``i``, so pruning propagates through it in both directions.

    Example:
        >>> DepthwiseNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 4, 16, 16])
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 8)
        self.dw1 = _conv_bn_relu(8, 8, groups=8)
        self.pw1 = nn.Conv2d(8, 16, 1)
        self.dw2 = nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.pw2 = nn.Conv2d(32, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dw1(self.stem(x))
        x = F.relu(self.pw1(x))
        x = F.relu(self.dw2(x))
        return self.head(F.relu(self.pw2(x)))


class ResidualNet(nn.Module):
    """``relu(x + bn2(conv2(relu(bn1(conv1(x))))))`` after a conv-bn-relu stem.

    ``stem`` and ``conv2`` feed the same add: a channel can only be removed where both are
    masked (put them in one ``dependency_group_id``).

    Example:
        >>> ResidualNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 4, 16, 16])
    """

    #: convolutions whose outputs meet in the residual add.
    residual_groups: tuple[tuple[str, ...], ...] = (("stem.0", "conv2"),)

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.head = nn.Conv2d(width, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.head(F.relu(x + y))


class SENet(nn.Module):
    """Squeeze-excitation: pool -> fc -> relu -> fc -> sigmoid -> broadcast multiply.

    ``fc2``'s outputs go through a sigmoid (0 -> 0.5), so its masked channels are removable
    only where the feature map they scale is removed too.

    Example:
        >>> SENet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 4, 16, 16])
    """

    def __init__(self, channels: int = 16, reduction: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)
        self.head = nn.Conv2d(channels, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv(x))
        b, c = x.size(0), x.size(1)
        s = F.adaptive_avg_pool2d(x, 1).flatten(1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return self.head(x * s.view(b, c, 1, 1))


class UNetSkip(nn.Module):
    """Encoder conv, strided down conv, nearest upsampling and a skip concatenation.

    Example:
        >>> UNetSkip()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 2, 16, 16])
    """

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.dec = nn.Conv2d(24, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        skip = F.relu(self.enc(x))
        y = F.relu(self.down(skip))
        y = F.interpolate(y, scale_factor=2.0, mode="nearest")
        y = F.relu(self.dec(torch.cat([y, skip], dim=1)))
        return self.head(y)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle with shapes read from ``x.size()``.

    Example:
        >>> channel_shuffle(torch.arange(4.0).view(1, 4, 1, 1), 2).flatten().tolist()
        [0.0, 2.0, 1.0, 3.0]
    """
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, -1, h, w)


class ChannelShuffleNet(nn.Module):
    """ShuffleNet-v2-style unit: ``chunk(2, dim=1)``, one half through convs, concat, shuffle.

    Shuffling interleaves the two halves, so channel ``i`` of one half and channel ``i`` of the
    other are coupled: a channel goes only if its partner goes too.

    Example:
        >>> ChannelShuffleNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 4, 16, 16])
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        half = width // 2
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.branch1 = nn.Conv2d(half, half, 1)
        self.branch2 = nn.Conv2d(half, half, 3, padding=1)
        self.head = nn.Conv2d(width, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = channel_shuffle(F.relu(self.stem(x)), 2)
        left, right = x.chunk(2, dim=1)
        right = F.relu(self.branch2(F.relu(self.branch1(right))))
        x = channel_shuffle(torch.cat([left, right], dim=1), 2)
        return self.head(x)


class PixelShuffleNet(nn.Module):
    """Super-resolution style: ``PixelUnshuffle``, ``nn.ChannelShuffle``, ``F.pixel_shuffle``.

    ``pixel_shuffle(2)`` makes one output channel of each run of four input channels, so a run
    goes only as a whole; a channel shuffle of ``g`` groups couples the same offset in every group.

    Example:
        >>> PixelShuffleNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 3, 16, 16])
    """

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.PixelUnshuffle(2)
        self.conv1 = nn.Conv2d(12, 16, 3, padding=1)
        self.shuffle = nn.ChannelShuffle(4)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.up = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(self.down(x)))
        x = F.relu(self.conv2(self.shuffle(x)))
        return self.head(F.relu(F.pixel_shuffle(self.up(x), 2)))


class FPNNet(nn.Module):
    """Feature-pyramid top-down path: lateral 1x1 convs added to upsampled coarser levels.

    The finest level is upsampled to ``c1.shape[-2:]``: reading the spatial sizes of ``c1``
    must not pin its channels.

    Example:
        >>> FPNNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 3, 16, 16])
    """

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.lateral1 = nn.Conv2d(8, 8, 1)
        self.lateral2 = nn.Conv2d(16, 8, 1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        c1 = F.relu(self.c1(x))
        c2 = F.relu(self.c2(c1))
        p1 = self.lateral1(c1) + F.interpolate(self.lateral2(c2), size=c1.shape[-2:], mode="nearest")
        return self.head(p1)


# -- attention / linear ---------------------------------------------------------------------------------------


class AttentionNet(nn.Module):
    """Multi-head self-attention from q/k/v ``Linear`` layers, output projection, mean-pool head.

    ``sdpa=False`` spells the attention out (view/transpose/matmul/softmax); ``sdpa=True`` calls
    ``F.scaled_dot_product_attention``. Heads are split with ``view(b, t, heads, -1)``. The
    explicit form scales scores by a constant ``head_dim ** -0.5`` fixed at construction, or,
    with ``scale_from_size=True``, by ``q.size(-1) ** -0.5`` read at run time (then the scale
    changes if the head size shrinks, so the head size must stay).

    Example:
        >>> AttentionNet()(torch.randn(1, 6, 16)).shape
        torch.Size([1, 4])
        >>> AttentionNet(sdpa=True)(torch.randn(2, 6, 16)).shape
        torch.Size([2, 4])
    """

    def __init__(self, d_model: int = 16, heads: int = 2, sdpa: bool = False, scale_from_size: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.sdpa = sdpa
        self.scale_from_size = scale_from_size
        self.scale = float((d_model // heads) ** -0.5)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.fc = nn.Linear(d_model, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        b, t = x.size(0), x.size(1)
        q = self.q_proj(x).view(b, t, self.heads, -1).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.heads, -1).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, -1).transpose(1, 2)
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scale = q.size(-1) ** -0.5 if self.scale_from_size else self.scale
            scores = torch.matmul(q, k.transpose(-2, -1)) * scale
            out = torch.matmul(torch.softmax(scores, dim=-1), v)
        out = self.out_proj(out.transpose(1, 2).reshape(b, t, -1))
        return self.head(F.relu(self.fc(out + x)).mean(dim=1))


class FlattenLinearNet(nn.Module):
    """``conv -> relu -> max-pool -> flatten -> Linear``: one conv channel is 64 Linear inputs.

    Example:
        >>> FlattenLinearNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 4])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 8 * 8, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.pool(F.relu(self.conv(x))), 1)
        return self.head(F.relu(self.fc(x)))


class SharedModuleNet(nn.Module):
    """The same conv applied twice (its input and output channels are the same channels).

    Example:
        >>> SharedModuleNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 4, 16, 16])
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))
        return self.head(x)


class Conv1dNet(nn.Module):
    """1-d convolutions with batch norm over ``[batch, channels, length]``.

    Example:
        >>> Conv1dNet()(torch.randn(1, 4, 32)).shape
        torch.Size([1, 4])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 16, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool1d(F.relu(self.conv2(x)), 2)
        return self.head(x.mean(dim=-1))


class ConvTransposeNet(nn.Module):
    """Strided conv down, ``ConvTranspose2d`` up (its weight is ``[in, out, kh, kw]``).

    Example:
        >>> ConvTransposeNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 3, 16, 16])
    """

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.up(F.relu(self.down(x)))))


class EmbeddingNet(nn.Module):
    """Token ``Embedding -> Linear -> relu``, mean over tokens, ``Linear`` head.

    Example:
        >>> EmbeddingNet()(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 4])
    """

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(F.relu(self.fc(self.embed(ids))).mean(dim=1))


class TextCNN(nn.Module):
    """Kim's text CNN: ``Embedding``, two ``Conv1d`` widths, max over time, concatenation.

    ``x.max(dim=2)`` returns ``(values, indices)``; both ``[0]`` and ``.values`` are used.

    Example:
        >>> TextCNN()(torch.zeros(2, 12, dtype=torch.long)).shape
        torch.Size([2, 4])
    """

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.conv3 = nn.Conv1d(dim, 12, 3, padding=1)
        self.conv5 = nn.Conv1d(dim, 12, 5, padding=2)
        self.head = nn.Linear(24, 4)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed(ids).transpose(1, 2)
        a = F.relu(self.conv3(x)).max(dim=2)[0]
        b = F.relu(self.conv5(x)).max(dim=2).values
        return self.head(torch.cat([a, b], dim=1))


class RecurrentNet(nn.Module):
    """``Linear -> LSTM -> last step -> Linear -> head``.

    The LSTM's input features are columns of its input weights, so the ``Linear`` before it
    shrinks; its hidden size feeds every gate and step, so it stays.

    Example:
        >>> RecurrentNet()(torch.randn(2, 7, 6)).shape
        torch.Size([2, 3])
    """

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.rnn = nn.LSTM(16, 12, batch_first=True)
        self.fc = nn.Linear(12, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(F.relu(self.inp(x)))
        return self.head(F.relu(self.fc(out[:, -1, :])))


class LayerNormMLP(nn.Module):
    """``Linear -> LayerNorm -> relu -> Linear -> relu -> head``.

    LayerNorm normalises over ``fc1``'s features (a zero feature changes the statistics), so
    ``fc1`` cannot shrink; ``fc2`` can.

    Example:
        >>> LayerNormMLP()(torch.randn(2, 16)).shape
        torch.Size([2, 4])
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.norm(self.fc1(x)))
        return self.head(F.relu(self.fc2(x)))


class GroupNormNet(nn.Module):
    """``conv -> GroupNorm(4 groups) -> relu -> conv -> relu -> head``.

    GroupNorm statistics span each group, so ``conv1`` cannot shrink; ``conv2`` can.

    Example:
        >>> GroupNormNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 4, 16, 16])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.norm(self.conv1(x)))
        return self.head(F.relu(self.conv2(x)))


# -- tracing ---------------------------------------------------------------------------------------------------


class UntraceableNet(nn.Module):
    """Python control flow on tensor sizes: ``torch.fx.symbolic_trace`` fails, the concrete tracer works.

    Example:
        >>> UntraceableNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 4, 16, 16])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.wide = nn.Conv2d(16, 16, 3, padding=1)
        self.narrow = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        if x.size(-1) > 8:  # a Python branch on a size
            x = F.relu(self.wide(x))
        else:
            x = F.relu(self.narrow(x))
        for _ in range(int(x.shape[1] > 2)):  # a loop count from a size
            x = x * 2.0
        return self.head(x)


class UnknownOpNet(nn.Module):
    """``torch.roll`` over channels, an operator speedup has no rule for.

    Speedup keeps the channels around it (and says so in ``report.unsupported``) and still
    prunes elsewhere.

    Example:
        >>> UnknownOpNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 4, 16, 16])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = torch.roll(F.relu(self.conv2(x)), shifts=1, dims=1)
        return self.head(F.relu(self.conv3(x)))


# -- factories ---------------------------------------------------------------------------------------------------


def concat_net() -> tuple[nn.Module, Tensor]:
    """:class:`ConcatNet` and a ``1x3x16x16`` input."""
    return _finish(ConcatNet()), _image()


def grouped_conv_net() -> tuple[nn.Module, Tensor]:
    """:class:`GroupedConvNet` and a ``1x3x16x16`` input."""
    return _finish(GroupedConvNet()), _image()


def depthwise_net() -> tuple[nn.Module, Tensor]:
    """:class:`DepthwiseNet` and a ``1x3x16x16`` input."""
    return _finish(DepthwiseNet()), _image()


def residual_net() -> tuple[nn.Module, Tensor]:
    """:class:`ResidualNet` and a ``1x3x16x16`` input."""
    return _finish(ResidualNet()), _image()


def se_net() -> tuple[nn.Module, Tensor]:
    """:class:`SENet` and a ``1x3x16x16`` input."""
    return _finish(SENet()), _image()


def unet_skip() -> tuple[nn.Module, Tensor]:
    """:class:`UNetSkip` and a ``1x3x16x16`` input."""
    return _finish(UNetSkip()), _image()


def channel_shuffle_net() -> tuple[nn.Module, Tensor]:
    """:class:`ChannelShuffleNet` and a ``1x3x16x16`` input."""
    return _finish(ChannelShuffleNet()), _image()


def attention_net(sdpa: bool = False, scale_from_size: bool = False) -> tuple[nn.Module, Tensor]:
    """:class:`AttentionNet` (options as there) and a ``2x6x16`` input."""
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(0))
    return _finish(AttentionNet(sdpa=sdpa, scale_from_size=scale_from_size)), x


def flatten_linear_net() -> tuple[nn.Module, Tensor]:
    """:class:`FlattenLinearNet` and a ``1x3x16x16`` input."""
    return _finish(FlattenLinearNet()), _image()


def shared_module_net() -> tuple[nn.Module, Tensor]:
    """:class:`SharedModuleNet` and a ``1x3x16x16`` input."""
    return _finish(SharedModuleNet()), _image()


def conv1d_net() -> tuple[nn.Module, Tensor]:
    """:class:`Conv1dNet` and a ``1x4x32`` input."""
    return _finish(Conv1dNet()), torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(0))


def conv_transpose_net() -> tuple[nn.Module, Tensor]:
    """:class:`ConvTransposeNet` and a ``1x3x16x16`` input."""
    return _finish(ConvTransposeNet()), _image()


def embedding_net() -> tuple[nn.Module, Tensor]:
    """:class:`EmbeddingNet` and ``2x8`` token ids."""
    return _finish(EmbeddingNet()), torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))


def layer_norm_mlp() -> tuple[nn.Module, Tensor]:
    """:class:`LayerNormMLP` and a ``2x16`` input."""
    return _finish(LayerNormMLP()), torch.randn(2, 16, generator=torch.Generator().manual_seed(0))


def group_norm_net() -> tuple[nn.Module, Tensor]:
    """:class:`GroupNormNet` and a ``1x3x16x16`` input."""
    return _finish(GroupNormNet()), _image()


def untraceable_net() -> tuple[nn.Module, Tensor]:
    """:class:`UntraceableNet` and a ``1x3x16x16`` input."""
    return _finish(UntraceableNet()), _image()


def unknown_op_net() -> tuple[nn.Module, Tensor]:
    """:class:`UnknownOpNet` and a ``1x3x16x16`` input."""
    return _finish(UnknownOpNet()), _image()


def pixel_shuffle_net() -> tuple[nn.Module, Tensor]:
    """:class:`PixelShuffleNet` and a ``1x3x16x16`` input."""
    return _finish(PixelShuffleNet()), _image()


def fpn_net() -> tuple[nn.Module, Tensor]:
    """:class:`FPNNet` and a ``1x3x16x16`` input."""
    return _finish(FPNNet()), _image()


def text_cnn() -> tuple[nn.Module, Tensor]:
    """:class:`TextCNN` and a ``2x12`` batch of token ids."""
    return _finish(TextCNN()), torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))


def recurrent_net() -> tuple[nn.Module, Tensor]:
    """:class:`RecurrentNet` and a ``2x7x6`` sequence batch."""
    return _finish(RecurrentNet()), torch.randn(2, 7, 6, generator=torch.Generator().manual_seed(0))


#: name -> factory returning ``(model, dummy_input)``.
PATTERNS: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {
    "concat": concat_net,
    "grouped_conv": grouped_conv_net,
    "depthwise": depthwise_net,
    "residual": residual_net,
    "se": se_net,
    "unet_skip": unet_skip,
    "channel_shuffle": channel_shuffle_net,
    "attention": attention_net,
    "attention_sdpa": lambda: attention_net(sdpa=True),
    "attention_size_scale": lambda: attention_net(scale_from_size=True),
    "flatten_linear": flatten_linear_net,
    "shared_module": shared_module_net,
    "conv1d": conv1d_net,
    "conv_transpose": conv_transpose_net,
    "embedding": embedding_net,
    "layer_norm_mlp": layer_norm_mlp,
    "group_norm": group_norm_net,
    "untraceable": untraceable_net,
    "unknown_op": unknown_op_net,
    "pixel_shuffle": pixel_shuffle_net,
    "fpn": fpn_net,
    "text_cnn": text_cnn,
    "recurrent": recurrent_net,
}
