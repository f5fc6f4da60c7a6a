"""Module wrappers: apply masks to a module's parameters, inputs and outputs in its forward.

Wrapping happens *in place*: the module stays where it is in the model, its parameters stay the
same objects under the same names, and only its ``forward`` is patched. So ``state_dict()`` keys
never change, an optimizer built before wrapping keeps working, and unwrapping restores the
module exactly. (NNI 2.x replaced modules by ``wrapper.module`` and renamed every key.)

Masks are 0/1 tensors of the target's shape (for activations: the shape without the batch
axis, or any shape that broadcasts against it) kept as non-persistent buffers, so they move with
``model.to(device)`` but do not change the checkpoint format.

Example:
    >>> import torch
    >>> conv = torch.nn.Conv2d(1, 2, 3)
    >>> wrapper = ModuleWrapper(conv, 'conv')
    >>> wrapper.set_mask('weight', torch.tensor([1., 0.]).view(2, 1, 1, 1).expand(2, 1, 3, 3))
    >>> bool(conv(torch.ones(1, 1, 3, 3))[0, 1].abs().sum() == conv.bias[1].abs())
    True
    >>> wrapper.unwrap()
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ModuleWrapper", "ActivationHook", "mask_buffer_name"]

# Masked positions get this added under apply_method='add' (e.g. attention scores before softmax).
ADD_MASK_VALUE = -1000.0

ActivationHook = Callable[["ModuleWrapper", str, Tensor], None]


def mask_buffer_name(target_name: str) -> str:
    """Name of the buffer that holds a target's mask on the wrapped module."""
    return f"_ps_mask_{target_name}"


class ModuleWrapper:
    """Patches one module's forward to apply masks on ``weight``/``bias``/buffers and activations.

    Args:
        module: the module to wrap (in place).
        module_name: its fully-qualified name in the model.
        config: ``{target_name: TargetSetting}`` (only ``apply_method`` is read here).
    """

    def __init__(self, module: nn.Module, module_name: str, config: Mapping[str, Any] | None = None) -> None:
        if isinstance(module.__dict__.get("_ps_wrapper"), ModuleWrapper):
            raise ValueError(f"module {module_name!r} is already wrapped")
        self.module = module
        self.name = module_name
        self.config: dict[str, Any] = dict(config or {})
        self.targets: list[str] = []
        self._hooks: dict[int, ActivationHook] = {}
        self._next_hook = 0
        self._had_instance_forward = "forward" in module.__dict__
        self._original_forward = module.forward
        try:
            self._arg_names = [
                p.name
                for p in inspect.signature(self._original_forward).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
        except (TypeError, ValueError):
            self._arg_names = []
        module.__dict__["_ps_wrapper"] = self
        module.forward = self._forward  # type: ignore[method-assign]

    # -- masks -------------------------------------------------------------------------------
    def set_mask(self, target_name: str, mask: Tensor | None) -> None:
        """Set (or clear, with ``None``) the mask of one target."""
        buffer = mask_buffer_name(target_name)
        if mask is None:
            self.module._buffers.pop(buffer, None)
            if target_name in self.targets:
                self.targets.remove(target_name)
            return
        if not target_name.startswith("_"):
            value = getattr(self.module, target_name, None)
            if not isinstance(value, Tensor):
                raise ValueError(f"{self.name}: no parameter or buffer {target_name!r} to mask")
            if tuple(mask.shape) != tuple(value.shape):
                raise ValueError(
                    f"{self.name}.{target_name}: mask shape {tuple(mask.shape)} != target shape {tuple(value.shape)}"
                )
            mask = mask.to(device=value.device)
        mask = mask.detach().to(dtype=torch.float32).contiguous()
        self.module.register_buffer(buffer, mask, persistent=False)
        if target_name not in self.targets:
            self.targets.append(target_name)

    def get_mask(self, target_name: str) -> Tensor | None:
        return self.module._buffers.get(mask_buffer_name(target_name))

    @property
    def masks(self) -> dict[str, Tensor]:
        return {t: m for t in self.targets if (m := self.get_mask(t)) is not None}

    def _apply(self, target_name: str, value: Tensor) -> Tensor:
        mask = self.get_mask(target_name)
        if mask is None or not isinstance(value, Tensor):
            return value
        method = getattr(self.config.get(target_name), "apply_method", "mul")
        if mask.dim() < value.dim() and mask.shape != value.shape[-mask.dim() :] and value.dim() == mask.dim() + 1:
            mask = mask.unsqueeze(0)
        if value.is_floating_point() and mask.dtype != value.dtype:
            # Masks are kept in float32; a half/bfloat16 model must not be promoted by them.
            mask = mask.to(value.dtype)
        if method == "add":
            return value + (1.0 - mask) * ADD_MASK_VALUE
        return value * mask

    # -- activation hooks -----------------------------------------------------------------------
    def add_hook(self, hook: ActivationHook) -> int:
        """Call ``hook(wrapper, target_name, tensor)`` for every input/output tensor in forward."""
        self._next_hook += 1
        self._hooks[self._next_hook] = hook
        return self._next_hook

    def remove_hook(self, hook_id: int) -> None:
        self._hooks.pop(hook_id, None)

    # -- forward ------------------------------------------------------------------------------
    def _input_target(self, position: int | None, key: str | None) -> list[str]:
        names = []
        if position is not None:
            names.append(f"_input_{position}")
            if position < len(self._arg_names):
                names.append(f"_input_{self._arg_names[position]}")
            if position == 0:
                names.append("_input_")
        if key is not None:
            names.append(f"_input_{key}")
            # The same argument passed by keyword: its positional targets apply too.
            if key in self._arg_names:
                index = self._arg_names.index(key)
                names.append(f"_input_{index}")
                if index == 0:
                    names.append("_input_")
        return names

    def _process(self, names: list[str], value: Any) -> Any:
        if not isinstance(value, Tensor):
            return value
        for name in names:
            value = self._apply(name, value)
        for hook in list(self._hooks.values()):
            hook(self, names[0] if names else "", value)
        return value

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        has_io = self._hooks or any(t.startswith("_") for t in self.targets)
        if has_io:
            args = tuple(self._process(self._input_target(i, None), a) for i, a in enumerate(args))
            kwargs = {k: self._process(self._input_target(None, k), v) for k, v in kwargs.items()}
        swapped: list[str] = []
        d = self.module.__dict__
        try:
            for target in self.targets:
                if target.startswith("_") or target in d:
                    continue
                original = getattr(self.module, target)
                # An instance attribute shadows the registered parameter only during this call,
                # so autograd flows to the parameter through the mask.
                d[target] = self._apply(target, original)
                swapped.append(target)
            output = self._original_forward(*args, **kwargs)
        finally:
            for target in swapped:
                d.pop(target, None)
        if has_io:
            output = self._process_output(output)
        return output

    def _process_output(self, output: Any) -> Any:
        if isinstance(output, Tensor):
            return self._process(["_output_", "_output_0"], output)
        if isinstance(output, tuple | list):
            items = [self._process([f"_output_{i}"], o) for i, o in enumerate(output)]
            return type(output)(items) if isinstance(output, list) else tuple(items)
        if isinstance(output, dict):
            return {k: self._process([f"_output_{k}"], v) for k, v in output.items()}
        return output

    # -- unwrap -------------------------------------------------------------------------------
    def unwrap(self) -> None:
        """Restore the module's own forward and drop the mask buffers (weights stay as they are)."""
        for target in list(self.targets):
            self.set_mask(target, None)
        if self._had_instance_forward:
            self.module.forward = self._original_forward  # type: ignore[method-assign]
        else:
            self.module.__dict__.pop("forward", None)
        self.module.__dict__.pop("_ps_wrapper", None)

    def __repr__(self) -> str:
        return f"ModuleWrapper({self.name!r}, {type(self.module).__name__}, targets={self.targets})"
