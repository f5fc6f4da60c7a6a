"""Export of compact models: ONNX (run by onnxruntime) and ``.pt2`` (torch.export), same outputs.

Every zoo model and graph pattern of ``test_speedup`` is pruned, sped up, exported both ways and
run; then the export helpers' own contract (inputs as tuples / dicts, modes, opset, errors,
the TorchScript fallback).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from search.speedup import check_onnx, export_onnx, export_pt2, load_pt2
from search.zoo.patterns import PATTERNS

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # torch.export internals

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# Shares test_speedup's cache of compact models when both files run in one session.
from tests.test_speedup import CASES, _call, cached_compress, max_diff  # noqa: E402

#: dynamo ONNX export takes several seconds on these: slow suite only
SLOW_EXPORTS = {"resnet50", "vgg16_bn", "mobilenet_v2"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """These models are tiny: one intra-op thread is faster than two fighting for 2 shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _export_params() -> list[Any]:
    """70% on every model (the slowest exports in the slow suite), 30% in the slow suite."""
    params = []
    for case in CASES.values():
        for ratio in (0.3, 0.7):
            marks: list[Any] = []
            if ratio == 0.3 or case.name in SLOW_EXPORTS:
                marks.append(pytest.mark.slow)
            if case.bug:
                marks.append(pytest.mark.xfail(strict=True, reason=case.bug))
            params.append(pytest.param(case.name, ratio, marks=marks, id=f"{case.name}-{int(ratio * 100)}"))
    return params


def _assert_close(expected: Any, got: Any) -> float:
    diff, scale = max_diff(expected, got)
    assert diff <= 1e-4 * max(1.0, scale), f"max |diff| {diff:.3e} at output scale {scale:.3e}"
    return diff


@pytest.mark.parametrize(("name", "ratio"), _export_params())
def test_compact_model_exports_to_onnx_and_pt2(name: str, ratio: float, tmp_path: Path) -> None:
    c = cached_compress(name, ratio)
    expected = _call(c.model, c.dummy_input)
    _assert_close(_call(c.masked, c.dummy_input), expected)

    onnx_path = export_onnx(c.model, c.dummy_input, tmp_path / f"{name}.onnx")
    assert onnx_path.is_file() and not (tmp_path / f"{name}.onnx.data").exists()
    assert check_onnx(onnx_path, c.model, c.dummy_input) <= 1e-4 * max(1.0, max_diff(expected, expected)[1])

    pt2_path = export_pt2(c.model, c.dummy_input, tmp_path / f"{name}.pt2")
    program = load_pt2(pt2_path)
    _assert_close(expected, _call(program.module(), c.dummy_input))


@pytest.mark.parametrize("name", ["resnet18", "transformer_classifier"])
def test_onnx_and_pt2_take_any_batch_size(name: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    c = cached_compress(name, 0.5)
    x = c.dummy_input
    batch = torch.cat([x, x.flip(0) if x.is_floating_point() else x, x], 0)  # 3x the dummy batch
    expected = _call(c.model, batch)
    session = ort.InferenceSession(str(export_onnx(c.model, x, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    _assert_close(expected, torch.from_numpy(session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]))
    _assert_close(expected, _call(load_pt2(export_pt2(c.model, x, tmp_path / "m.pt2")).module(), batch))


# -- the helpers' contract ----------------------------------------------------------------------------------------


class TwoInputs(nn.Module):
    """Two tensor inputs, one BN (train vs eval differ), two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(5, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, image: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.relu(self.bn(self.conv(image)))
        pooled = y.mean(dim=(2, 3))
        return pooled + self.fc(features), y


def _two_inputs() -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    torch.manual_seed(0)
    return TwoInputs(), (torch.randn(2, 3, 8, 8), torch.randn(2, 5))


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_several_inputs_and_outputs(as_dict: bool, tmp_path: Path) -> None:
    model, (image, features) = _two_inputs()
    model.eval()
    dummy: Any = {"features": features, "image": image} if as_dict else (image, features)
    path = export_onnx(model, dummy, tmp_path / "two.onnx")
    assert check_onnx(path, model, dummy) < 1e-5
    program = load_pt2(export_pt2(model, dummy, tmp_path / "two.pt2"))
    _assert_close(_call(model, dummy), _call(program.module(), dummy))


class DictArgument(nn.Module):
    """One positional argument that is a dict of tensors (``forward(self, batch)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = TwoInputs()

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.inner(batch["image"], batch["features"])


def test_a_dict_as_the_last_positional_input(tmp_path: Path) -> None:
    """torch.onnx.export alone would read the dict as keyword inputs and miss ``batch``."""
    model, (image, features) = _two_inputs()
    wrapped = DictArgument().eval()
    wrapped.inner.load_state_dict(model.state_dict())
    dummy = ({"image": image, "features": features},)
    path = export_onnx(wrapped, dummy, tmp_path / "dict.onnx", fallback=False)
    assert check_onnx(path, wrapped, dummy) < 1e-5


def test_exports_run_in_eval_mode_and_restore_the_mode(tmp_path: Path) -> None:
    model, inputs = _two_inputs()
    train_out = _call(copy.deepcopy(model).train(), inputs)  # (a training pass updates BN statistics)
    eval_out = _call(copy.deepcopy(model).eval(), inputs)
    assert not torch.allclose(eval_out[0], train_out[0])
    model.train()
    path = export_onnx(model, inputs, tmp_path / "m.onnx")
    assert model.training and model.bn.training
    assert check_onnx(path, model, inputs) < 1e-5  # compares with eval mode
    assert model.training
    program = load_pt2(export_pt2(model, inputs, tmp_path / "m.pt2"))
    assert model.training
    _assert_close(eval_out, _call(program.module(), inputs))


def test_opset_and_parent_directories(tmp_path: Path) -> None:
    import onnx

    model, x = PATTERNS["concat"]()
    path = export_onnx(model, x, tmp_path / "deep" / "er" / "concat.onnx", opset=18)
    assert isinstance(path, Path) and path.is_file()
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    assert export_pt2(model, x, tmp_path / "a" / "concat.pt2").is_file()


def test_check_onnx_reports_a_mismatch(tmp_path: Path) -> None:
    model, x = PATTERNS["concat"]()
    path = export_onnx(model, x, tmp_path / "concat.onnx")
    assert check_onnx(path, model, x) < 1e-5
    with torch.no_grad():
        model.head.bias += 1.0
    with pytest.raises(ValueError, match=r"(?s)disagree on output\(s\) \[0\].*max \|diff\| 1\.0"):
        check_onnx(path, model, x)
    with pytest.raises(ValueError, match="takes 1 inputs"):
        check_onnx(path, model, (x, x))


def test_check_onnx_reports_a_shape_mismatch(tmp_path: Path) -> None:
    model = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    path = export_onnx(model, x, tmp_path / "linear.onnx")
    other = nn.Linear(4, 2)
    with pytest.raises(ValueError, match=r"shape \(2, 3\) from onnxruntime, \(2, 2\) from torch"):
        check_onnx(path, other, x)


def _dynamo_fails(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    calls: list[bool] = []
    real = torch.onnx.export

    def export(*args: Any, dynamo: bool = True, **kwargs: Any) -> Any:
        calls.append(dynamo)
        if dynamo:
            raise RuntimeError("simulated torch.export failure")
        return real(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)
    return calls


def test_falls_back_to_the_torchscript_exporter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    calls = _dynamo_fails(monkeypatch)
    model, x = PATTERNS["residual"]()
    with caplog.at_level("WARNING", logger="search.speedup.export"):
        path = export_onnx(model, x, tmp_path / "residual.onnx")
    assert calls == [True, True, False]  # dynamic batch, static shapes, then the TorchScript exporter
    assert "simulated torch.export failure" in caplog.text
    assert check_onnx(path, model, x) < 1e-4


def test_no_fallback_raises_the_dynamo_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _dynamo_fails(monkeypatch)
    model, x = PATTERNS["residual"]()
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(model, x, tmp_path / "residual.onnx", fallback=False)
