"""Snapshot everything a call could change on a user's model, and compare (DESIGN.md: "the user's model is theirs").

Import it from any test as ``from tests.model_state import ModelState, used_model``: the editable install puts
the repository root on ``sys.path``, so ``tests`` is a namespace package wherever pytest runs from.

Values are compared, not ``Tensor._version``: a restore that copies the old values back in place bumps the
version counter and still hands the user their model exactly as it was.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_globals

MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
TENSOR_HOOK_DICTS = ("_backward_hooks", "_post_accumulate_grad_hooks")
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
)
PLAIN_VALUES = (bool, int, float, str, tuple, type(None))


class ModelState:
    """What ``model`` looks like now: its submodules (the same objects), their modes and public settings
    (``training``, ``inplace``, ``momentum``, ...), its parameters and buffers (the same objects, values,
    dtypes and devices; BatchNorm's running statistics and ``num_batches_tracked`` included, non-persistent
    buffers too), ``requires_grad`` flags, ``.grad`` fields (the same tensors, same values), and every hook
    dict of its modules, of its parameters and of torch's global module hooks.

    ``tensors`` is a ``state_dict`` copy: ``model.load_state_dict(state.tensors)`` undoes a change of values.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = dict(model.named_modules())
        self.settings = {name: public_settings(m) for name, m in self.modules.items()}
        self.tensors = {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}
        self.parameters = dict(model.named_parameters())
        self.buffers = dict(model.named_buffers())
        self.buffer_values = {name: b.detach().clone() for name, b in self.buffers.items()}
        self.flags = {name: p.requires_grad for name, p in self.parameters.items()}
        self.grads = {name: p.grad for name, p in self.parameters.items()}
        self.grad_values = {name: None if g is None else g.clone() for name, g in self.grads.items()}
        self.hooks = hook_dicts(model)
        self.full_backward_flags = {name: m._is_full_backward_hook for name, m in self.modules.items()}
        self.global_hooks = global_hook_dicts()

    def assert_unchanged(self) -> None:
        model = self.model
        modules = dict(model.named_modules())
        assert modules.keys() == self.modules.keys(), "submodules added or removed"
        for name, m in modules.items():
            assert m is self.modules[name], f"submodule {name!r} replaced"
            assert_same_settings(name, public_settings(m), self.settings[name])

        current = model.state_dict(keep_vars=True)
        assert current.keys() == self.tensors.keys()
        for name, tensor in self.tensors.items():
            assert_same_values(name, current[name].detach(), tensor)

        parameters = dict(model.named_parameters())
        assert parameters.keys() == self.parameters.keys()
        for name, p in parameters.items():
            assert p is self.parameters[name], f"parameter {name!r} replaced"
            assert p.requires_grad == self.flags[name], f"{name}.requires_grad changed"
            assert p.grad is self.grads[name], f"{name}.grad replaced"
            if p.grad is not None:
                assert_same_values(f"{name}.grad", p.grad, self.grad_values[name])

        buffers = dict(model.named_buffers())
        assert buffers.keys() == self.buffers.keys()
        for name, b in buffers.items():
            assert b is self.buffers[name], f"buffer {name!r} replaced"
            assert_same_values(name, b.detach(), self.buffer_values[name])

        assert hook_dicts(model) == self.hooks, "a module or parameter hook was added or removed"
        assert {name: m._is_full_backward_hook for name, m in modules.items()} == self.full_backward_flags
        assert global_hook_dicts() == self.global_hooks, "a global module hook was added or removed"


def assert_same_values(name: str, tensor: Tensor, expected: Tensor) -> None:
    assert tensor.dtype == expected.dtype and tensor.device == expected.device, f"{name}: dtype or device changed"
    assert tensor.shape == expected.shape, f"{name}: shape changed"
    assert torch.equal(tensor, expected), f"{name} changed"


def public_settings(module: nn.Module) -> dict[str, object]:
    """The module's own attributes that are not torch's bookkeeping: ``training``, ``inplace``, ``eps``..."""
    return {key: value for key, value in vars(module).items() if not key.startswith("_")}


def assert_same_settings(name: str, settings: dict[str, object], expected: dict[str, object]) -> None:
    assert settings.keys() == expected.keys(), f"attributes of {name!r} added or removed"
    for key, value in settings.items():
        old = expected[key]
        same = value is old or (isinstance(value, PLAIN_VALUES) and type(value) is type(old) and value == old)
        assert same, f"{name}.{key} changed from {old!r} to {value!r}"


def hook_dicts(model: nn.Module) -> dict[str, dict]:
    """Every hook dict as ``{hook id: hook}``, by owner: hooks are compared by identity, flags by value."""
    dicts = {}
    for name, m in model.named_modules():
        for attribute in MODULE_HOOK_DICTS:
            dicts[f"{name}.{attribute}"] = dict(getattr(m, attribute, None) or {})
    for name, p in model.named_parameters():
        for attribute in TENSOR_HOOK_DICTS:
            dicts[f"{name}.{attribute}"] = dict(getattr(p, attribute, None) or {})
    return dicts


def global_hook_dicts() -> dict[str, dict]:
    return {name: dict(getattr(module_globals, name)) for name in GLOBAL_HOOK_DICTS}


def used_model(model: nn.Module) -> nn.Module:
    """Put ``model`` in the state a user mid-training leaves it in: train mode, the first half of its
    parameters frozen, ``.grad`` fields on the trainable ones."""
    model.train()
    params = list(model.parameters())
    for p in params[: len(params) // 2]:
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    for p in params[len(params) // 2 :]:
        p.grad = torch.randn(p.shape, generator=generator)
    return model
