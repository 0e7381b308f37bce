"""The one module that touches hooks.

Everything that looks inside a model goes through :func:`probe`: it puts the model in eval mode, captures
what is asked for, and on the way out (``finally``) removes every hook and gives back each submodule's
train/eval mode, each parameter's ``requires_grad`` flag and ``.grad`` field, exactly as it found them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

Layer = tuple[str, nn.Module]

GUIDED_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


class _StopForward(Exception):
    """Raised from a hook once every requested activation is captured: the rest of the network is not run."""


@dataclass
class Capture:
    """What a probe saw during its forward passes, by dotted layer name (the last call of each module)."""

    model: nn.Module
    outputs: dict[str, Tensor] = field(default_factory=dict)
    inputs: dict[str, Tensor] = field(default_factory=dict)
    stop_early: bool = False

    def run(self, x: Tensor) -> Tensor | None:
        """Forward ``x``; returns the logits, or None when the probe stopped after its last layer.

        A failure inside the user's network is reported as a ValueError about ``x`` (the usual cause: a
        picture too small for the network's pooling, or not what its first layer expects), with the
        network's own error chained for the details.
        """
        try:
            return self.model(x)
        except _StopForward:
            return None
        except RuntimeError as error:
            raise ValueError(
                f"x: {type(self.model).__name__} cannot run on an input of shape {tuple(x.shape)}: {error}"
            ) from error


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters inside; every module's mode, ``requires_grad`` and ``.grad`` given back.

    Freezing the parameters means no backward pass inside can write a ``.grad`` (autograd accumulates
    into an existing ``.grad`` in place), and no graph is recorded for layers below the one studied.
    """
    modes = [(module, module.training) for module in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        # A forward pass in train mode would rewrite BatchNorm running statistics and make dropout random.
        model.eval()
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for module, training in modes:
            module.training = training
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad


@contextmanager
def probe(
    model: nn.Module,
    outputs: Sequence[Layer] = (),
    inputs: Sequence[Layer] = (),
    *,
    differentiable: bool = False,
    guide_activations: bool = False,
    stop_early: bool = False,
) -> Iterator[Capture]:
    """Capture layer outputs and inputs of ``model`` during the forward passes run inside the block.

    Parameters are frozen inside the block: gradients exist only for tensors that ask for them (the
    input image, or the captured outputs below).

    differentiable: each captured output requires grad and stays in the autograd graph, safe from later
        in-place ops, so ``torch.autograd.grad(score, capture.outputs[name])`` gives the gradient at the
        layer's output; when the input does not require grad, the output is a leaf and nothing below the
        layer is recorded at all.
    guide_activations: guided backpropagation; every ``nn.ReLU`` / ``nn.ReLU6`` passes back only positive
        gradients (on top of its own mask of positive inputs).
    stop_early: abort the forward pass once every requested layer has been seen (see ``Capture.run``).
    """
    capture = Capture(model, stop_early=stop_early)
    wanted = {name for name, _ in outputs} | {f"input:{name}" for name, _ in inputs}
    seen: set[str] = set()
    handles = []

    def maybe_stop(key: str) -> None:
        seen.add(key)
        if stop_early and seen >= wanted:
            raise _StopForward

    def output_hook(name: str):
        def hook(module, args, output):
            if not isinstance(output, Tensor):
                capture.outputs[name] = output
                maybe_stop(name)
                return None
            if differentiable:
                if not output.requires_grad:
                    output = output.detach().requires_grad_(True)
                capture.outputs[name] = output
                maybe_stop(name)
                # Hand the network a copy: an in-place op further on (ReLU(inplace=True), `out += identity`)
                # then cannot overwrite the tensor whose gradient is asked for.
                return output.clone()
            # A copy, for the same reason: `out += identity` downstream would rewrite a shared tensor.
            capture.outputs[name] = output.detach().clone()
            maybe_stop(name)
            return None

        return hook

    def input_hook(name: str):
        def hook(module, args):
            first = args[0] if args else None
            if isinstance(first, Tensor) and not differentiable:
                first = first.detach().clone()
            capture.inputs[name] = first
            maybe_stop(f"input:{name}")

        return hook

    def guide(module, args, output):
        if output.requires_grad:
            output.register_hook(lambda grad: grad.clamp(min=0))

    with preserved_state(model):
        try:
            for name, module in outputs:
                handles.append(module.register_forward_hook(output_hook(name)))
            for name, module in inputs:
                handles.append(module.register_forward_pre_hook(input_hook(name)))
            if guide_activations:
                for module in model.modules():
                    if isinstance(module, GUIDED_ACTIVATIONS):
                        handles.append(module.register_forward_hook(guide))
            with torch.set_grad_enabled(differentiable or guide_activations):
                yield capture
        finally:
            for handle in handles:
                handle.remove()
