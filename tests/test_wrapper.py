"""In-place module wrapping: names, parameters, masks in forward and backward, unwrap, copy, export.

Wrapping patches a module's ``forward`` and nothing else, so a pruned model keeps its
``state_dict`` keys, its parameter objects and every optimizer built on them; masks are
non-persistent buffers that move with the model; export writes safetensors only.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import Tensor, nn

from search.config import TargetSetting
from search.pruning import L1NormPruner, LevelPruner, load_masks, load_state_dict
from search.wrapper import ADD_MASK_VALUE, ModuleWrapper, mask_buffer_name
from tests.utils import (
    PRUNED_TYPE,
    ZOO_MODELS,
    build_model,
    clone_masks,
    masked_count,
    masked_weights_model,
    model_input,
)

pytestmark = pytest.mark.usefixtures("single_thread")

MODELS = list(ZOO_MODELS)
PRUNER_CLASSES = {"level": LevelPruner, "l1": L1NormPruner}
# element masks (Level) and channel masks (L1) on every model; Level on ResNet-18 only under -m slow
MODEL_PRUNER_CASES = [
    pytest.param(m, p, marks=[pytest.mark.slow] if (m, p) == ("resnet18", "level") else [])
    for m in MODELS
    for p in PRUNER_CLASSES
]


def _prune(model_name: str, pruner: str = "l1", ratio: float = 0.5) -> tuple[nn.Module, object, dict]:
    model = build_model(model_name)
    p = PRUNER_CLASSES[pruner](model, [{"op_types": [PRUNED_TYPE[model_name]], "sparse_ratio": ratio}])
    _, masks = p.compress()
    return model, p, masks


def _weight_masks(masks: dict[str, dict[str, Tensor]]) -> list[tuple[str, Tensor]]:
    return [(name, t["weight"]) for name, t in masks.items() if "weight" in t]


# -- names and parameters are untouched -------------------------------------------------------------


@pytest.mark.parametrize("model_name", MODELS)
def test_wrapping_keeps_state_dict_keys_and_parameter_objects(model_name: str) -> None:
    model = build_model(model_name)
    keys = list(model.state_dict())
    params = dict(model.named_parameters())
    pruner = L1NormPruner(model, [{"op_types": [PRUNED_TYPE[model_name]], "sparse_ratio": 0.5}])
    pruner.compress()
    assert list(model.state_dict()) == keys  # masks are non-persistent: no extra keys
    after = dict(model.named_parameters())
    assert list(after) == list(params)
    assert all(after[name] is param for name, param in params.items())
    assert pruner.get_origin2wrapped_parameter_name_map() == {name: name for name in params}


def test_get_modules_wrapper_maps_each_configured_module_to_its_wrapper() -> None:
    model = build_model("digits_cnn")
    pruner = L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    wrappers = pruner.get_modules_wrapper()
    modules = dict(model.named_modules())
    # conv layers plus the BatchNorms aligned to them, in model order
    assert list(wrappers) == ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3"]
    assert all(wrapper.module is modules[name] and wrapper.name == name for name, wrapper in wrappers.items())


@pytest.mark.parametrize("model_name", MODELS)
def test_optimizer_created_before_pruning_still_updates_the_parameters(model_name: str) -> None:
    model = build_model(model_name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    L1NormPruner(model, [{"op_types": [PRUNED_TYPE[model_name]], "sparse_ratio": 0.5}]).compress()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.zero_grad()
    model(model_input(model_name)).pow(2).mean().backward()
    optimizer.step()
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) >= len(before) // 2


@pytest.mark.parametrize(("model_name", "pruner"), MODEL_PRUNER_CASES)
def test_gradients_of_masked_weights_are_zero(model_name: str, pruner: str) -> None:
    model, _, masks = _prune(model_name, pruner)
    model(model_input(model_name)).pow(2).mean().backward()
    modules = dict(model.named_modules())
    for name, mask in _weight_masks(masks):
        grad = modules[name].weight.grad
        assert grad is not None, name
        assert torch.all(grad[mask == 0] == 0), name
    # ...while kept weights still learn
    assert any(bool(modules[n].weight.grad[m == 1].abs().sum() > 0) for n, m in _weight_masks(masks))


# -- unwrap and re-wrap -----------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", MODELS)
def test_unwrap_restores_the_class_forward_and_the_unmasked_function(model_name: str) -> None:
    model, pruner, masks = _prune(model_name)
    x = model_input(model_name)
    unmasked = masked_weights_model(model_name, model, {})
    pruner.unwrap_model()
    modules = dict(model.named_modules())
    assert all("forward" not in modules[name].__dict__ for name in masks)
    assert all(mask_buffer_name("weight") not in modules[name]._buffers for name in masks)
    with torch.no_grad():
        torch.testing.assert_close(model(x), unmasked(x))
    assert pruner.get_modules_wrapper() == {}


@pytest.mark.parametrize("model_name", MODELS)
def test_wrap_after_unwrap_reapplies_the_same_masks(model_name: str) -> None:
    model, pruner, masks = _prune(model_name)
    x = model_input(model_name)
    with torch.no_grad():
        masked_out = model(x)
    saved = clone_masks(masks)
    pruner.unwrap_model()
    kept_while_unwrapped = pruner.get_masks()
    pruner.wrap_model()
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked_out)
    for masks_now in (kept_while_unwrapped, pruner.get_masks()):
        assert set(masks_now) == set(saved)
        assert all(torch.equal(masks_now[m][t], saved[m][t]) for m in saved for t in saved[m])


def test_load_masks_while_unwrapped_keeps_the_other_kept_masks_and_stays_unwrapped() -> None:
    # Regression: loading one module's mask while unwrapped wrapped that module and dropped the rest.
    model, pruner, masks = _prune("digits_cnn")
    saved = clone_masks(masks)
    pruner.unwrap_model()
    pruner.load_masks({"conv1": {"weight": torch.ones_like(saved["conv1"]["weight"])}})
    assert all("forward" not in m.__dict__ for m in model.modules())
    pruner.wrap_model()
    now = pruner.get_masks()
    assert masked_count(now["conv1"]["weight"]) == 0
    assert torch.equal(now["conv3"]["weight"], saved["conv3"]["weight"])
    assert torch.equal(now["bn2"]["weight"], saved["bn2"]["weight"])


def test_unwrap_restores_a_forward_that_was_set_on_the_instance() -> None:
    module = nn.Linear(3, 3)

    def custom_forward(x: Tensor) -> Tensor:
        return x * 0

    module.forward = custom_forward
    ModuleWrapper(module, "m").unwrap()
    assert module.forward is custom_forward


def test_wrapping_a_module_twice_is_an_error() -> None:
    module = nn.Linear(2, 2)
    ModuleWrapper(module, "lin")
    with pytest.raises(ValueError, match="'lin' is already wrapped"):
        ModuleWrapper(module, "lin")


def test_a_mask_of_the_wrong_shape_is_rejected_naming_module_and_target() -> None:
    wrapper = ModuleWrapper(nn.Linear(3, 2), "fc")
    with pytest.raises(ValueError, match=r"fc\.weight: mask shape \(3, 2\) != target shape \(2, 3\)"):
        wrapper.set_mask("weight", torch.ones(3, 2))


# -- activation masks -------------------------------------------------------------------------------


def test_input_mask_zeroes_input_features_before_the_layer() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    ModuleWrapper(layer, "fc").set_mask("_input_", torch.tensor([1.0, 0.0, 1.0]))
    x = torch.randn(4, 3)
    expected = nn.functional.linear(x * torch.tensor([1.0, 0.0, 1.0]), layer.weight, layer.bias)
    torch.testing.assert_close(layer(x), expected)


def test_per_channel_output_mask_zeroes_conv_channels() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3)
    ModuleWrapper(conv, "conv").set_mask("_output_", torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1))
    out = conv(torch.randn(2, 2, 5, 5))
    assert torch.all(out[:, 1] == 0)
    assert torch.all(out[:, [0, 2]] != 0)


class _TwoInputs(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return a + b, a * b


@pytest.mark.parametrize("target", ["_input_1", "_input_b"])
@pytest.mark.parametrize("as_keyword", [False, True], ids=["positional", "keyword"])
def test_second_input_masked_by_position_or_by_argument_name(target: str, as_keyword: bool) -> None:
    module = _TwoInputs()
    ModuleWrapper(module, "m").set_mask(target, torch.tensor([0.0, 1.0]))
    a, b = torch.ones(1, 2), torch.full((1, 2), 3.0)
    # Regression: `_input_1` used to be ignored when `b` came as a keyword argument.
    out_sum, _ = module(a, b=b) if as_keyword else module(a, b)
    assert out_sum.tolist() == [[1.0, 4.0]]


def test_first_input_mask_applies_when_the_input_is_passed_by_keyword() -> None:
    layer = nn.Linear(2, 1, bias=False)
    nn.init.ones_(layer.weight)
    ModuleWrapper(layer, "fc").set_mask("_input_", torch.tensor([1.0, 0.0]))
    assert layer(input=torch.ones(1, 2)).item() == 1.0


def test_tuple_output_masks_apply_per_index() -> None:
    module = _TwoInputs()
    ModuleWrapper(module, "m").set_mask("_output_1", torch.tensor([1.0, 0.0]))
    out_sum, out_prod = module(torch.full((1, 2), 2.0), torch.full((1, 2), 3.0))
    assert out_sum.tolist() == [[5.0, 5.0]]
    assert out_prod.tolist() == [[6.0, 0.0]]


class _DictOutput(nn.Module):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": x, "features": 2 * x}


def test_dict_output_masks_apply_per_key() -> None:
    module = _DictOutput()
    ModuleWrapper(module, "m").set_mask("_output_features", torch.tensor([0.0, 1.0]))
    out = module(torch.ones(1, 2))
    assert out["logits"].tolist() == [[1.0, 1.0]]
    assert out["features"].tolist() == [[0.0, 2.0]]


def test_add_apply_method_pushes_masked_scores_down_instead_of_zeroing() -> None:
    module = nn.Identity()
    ModuleWrapper(module, "scores", {"_output_": TargetSetting(apply_method="add")}).set_mask(
        "_output_", torch.tensor([1.0, 0.0, 1.0])
    )
    out = module(torch.zeros(1, 3))
    assert out.tolist() == [[0.0, ADD_MASK_VALUE, 0.0]]
    assert torch.softmax(out, -1)[0, 1] < 1e-6


def test_activation_collector_sees_each_forward_until_removed() -> None:
    model = build_model("digits_cnn")
    pruner = L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])

    def collector(buffer: list) -> object:
        return lambda module, inputs, output: buffer.append(tuple(output.shape))

    collector_id = pruner.add_activation_collector(collector)
    model(model_input("digits_cnn", 2))
    buffers = pruner.remove_activation_collector(collector_id)
    model(model_input("digits_cnn", 2))
    assert buffers["conv1"] == [(2, 32, 8, 8)]
    assert buffers["conv3"] == [(2, 64, 4, 4)]


# -- masks travel with the model --------------------------------------------------------------------


@pytest.mark.parametrize("model_name", MODELS)
def test_masks_follow_a_dtype_change_and_the_forward_still_works(model_name: str) -> None:
    model, pruner, _ = _prune(model_name)
    x = model_input(model_name)
    with torch.no_grad():
        out = model(x)
    model.double()
    assert all(m.dtype == torch.float64 for t in pruner.get_masks().values() for m in t.values())
    with torch.no_grad():
        out64 = model(x.double() if x.is_floating_point() else x)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out, rtol=1e-4, atol=1e-4)


def test_masks_computed_on_a_bfloat16_model_keep_its_dtype() -> None:
    # Regression: float32 masks promoted bfloat16 weights, and the conv then refused its input.
    model = build_model("digits_cnn").bfloat16()
    L1NormPruner(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}]).compress()
    with torch.no_grad():
        out = model(model_input("digits_cnn").bfloat16())
    assert out.dtype == torch.bfloat16 and bool(out.isfinite().all())


def test_masks_follow_a_device_change() -> None:
    model, pruner, _ = _prune("digits_cnn")
    model.to("meta")  # a second device that every machine has
    assert {m.device.type for t in pruner.get_masks().values() for m in t.values()} == {"meta"}
    assert model(torch.empty(2, 1, 8, 8, device="meta")).shape == (2, 10)


@pytest.mark.parametrize("model_name", MODELS)
def test_deepcopy_of_a_pruned_model_keeps_masks_and_is_independent(model_name: str) -> None:
    model, _, masks = _prune(model_name)
    x = model_input(model_name)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))
    twin_modules = dict(twin.named_modules())
    for name, targets in masks.items():
        for target, mask in targets.items():
            twin_mask = twin_modules[name]._buffers[mask_buffer_name(target)]
            assert torch.equal(twin_mask, mask) and twin_mask is not mask
    # the copy's forward masks the copy's weights, not the original's
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.01)
        assert not torch.allclose(twin(x), model(x))
        reference = masked_weights_model(model_name, twin, masks)
        torch.testing.assert_close(twin(x), reference(x), rtol=1e-4, atol=1e-5)


# -- export -----------------------------------------------------------------------------------------


@pytest.fixture
def no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything unpickles: export and load are safetensors only."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must not be needed")

    monkeypatch.setattr(torch, "load", forbidden)


@pytest.mark.usefixtures("no_torch_load")
@pytest.mark.parametrize(("model_name", "pruner"), MODEL_PRUNER_CASES)
def test_export_writes_safetensors_weights_with_masked_entries_zero(
    tmp_path: Path, model_name: str, pruner: str
) -> None:
    model, p, masks = _prune(model_name, pruner)
    p.export_model(tmp_path / "model.safetensors")
    state = safetensors.torch.load_file(tmp_path / "model.safetensors")
    assert set(state) == set(model.state_dict())
    modules = dict(model.named_modules())
    for name, targets in masks.items():
        for target, mask in targets.items():
            exported = state[f"{name}.{target}"]
            assert torch.all(exported[mask == 0] == 0), f"{name}.{target}"
            torch.testing.assert_close(exported[mask == 1], getattr(modules[name], target).detach()[mask == 1])


@pytest.mark.usefixtures("no_torch_load")
@pytest.mark.parametrize("model_name", MODELS)
def test_exported_masks_round_trip_through_load_masks(tmp_path: Path, model_name: str) -> None:
    model, pruner, masks = _prune(model_name)
    pruner.export_model(tmp_path / "model.safetensors", tmp_path / "masks.safetensors")
    loaded = load_masks(tmp_path / "masks.safetensors")
    assert set(loaded) == set(masks)
    assert all(torch.equal(loaded[m][t], masks[m][t]) for m in masks for t in masks[m])
    # ...and a second pruner on a fresh copy of the weights applies them
    fresh = build_model(model_name)
    fresh.load_state_dict(model.state_dict())
    second = L1NormPruner(fresh, [{"op_types": [PRUNED_TYPE[model_name]], "sparse_ratio": 0.5}])
    second.load_masks(loaded)
    x = model_input(model_name)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


@pytest.mark.usefixtures("no_torch_load")
@pytest.mark.parametrize(("model_name", "pruner"), MODEL_PRUNER_CASES)
def test_exported_weights_in_a_fresh_model_compute_the_masked_model(
    tmp_path: Path, model_name: str, pruner: str
) -> None:
    model, p, _ = _prune(model_name, pruner)
    p.export_model(tmp_path / "model.safetensors")
    fresh = build_model(model_name, seed=1)
    fresh.load_state_dict(load_state_dict(tmp_path / "model.safetensors"))
    x = model_input(model_name)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=1e-4, atol=1e-5)


def test_load_masks_rejects_an_unknown_module_and_a_wrong_shape() -> None:
    model = build_model("digits_cnn")
    pruner = L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    with pytest.raises(ValueError, match="'nope' that is not in the model"):
        pruner.load_masks({"nope": {"weight": torch.ones(1)}})
    with pytest.raises(ValueError, match="conv1.weight: mask shape"):
        pruner.load_masks({"conv1": {"weight": torch.ones(3)}})
