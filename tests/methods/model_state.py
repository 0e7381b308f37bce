"""Snapshot everything a call could change on a model, and compare."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as module_globals

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


class ModelState:
    def __init__(self, model: nn.Module):
        self.model = model
        self.modes = {name: m.training for name, m in model.named_modules()}
        self.tensors = {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}
        self.flags = {name: p.requires_grad for name, p in model.named_parameters()}
        self.grads = {name: p.grad for name, p in model.named_parameters()}
        self.grad_values = {name: None if g is None else g.clone() for name, g in self.grads.items()}
        self.hooks = hook_counts(model)
        self.full_backward_flags = {name: m._is_full_backward_hook for name, m in model.named_modules()}

    def assert_unchanged(self) -> None:
        model = self.model
        assert {name: m.training for name, m in model.named_modules()} == self.modes
        current = model.state_dict(keep_vars=True)
        assert current.keys() == self.tensors.keys()
        for name, tensor in self.tensors.items():
            assert torch.equal(current[name].detach(), tensor), f"{name} changed"
        assert {name: p.requires_grad for name, p in model.named_parameters()} == self.flags
        for name, p in model.named_parameters():
            assert p.grad is self.grads[name], f"{name}.grad replaced"
            if p.grad is not None:
                assert torch.equal(p.grad, self.grad_values[name]), f"{name}.grad changed"
        assert hook_counts(model) == self.hooks
        assert {name: m._is_full_backward_hook for name, m in model.named_modules()} == self.full_backward_flags
        assert all(len(getattr(module_globals, name)) == 0 for name in GLOBAL_HOOK_DICTS)


def hook_counts(model: nn.Module) -> dict[str, int]:
    counts = {}
    for name, m in model.named_modules():
        for attribute in HOOK_DICTS:
            counts[f"{name}.{attribute}"] = len(getattr(m, attribute, {}) or {})
    for name, p in model.named_parameters():
        counts[f"{name}._backward_hooks"] = len(p._backward_hooks or {})
    return counts


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
