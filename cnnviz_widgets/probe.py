"""The one module that touches hooks.

Everything that looks inside a model goes through :func:`probe`: it puts the model in eval mode, captures
what is asked for, and on the way out (``finally``) removes every hook and gives back each submodule's
train/eval mode, each parameter's ``requires_grad`` flag and ``.grad`` field, exactly as it found them.
Probes of one model take turns (:func:`model_lock`): hooks of two threads on one model would mix their
captures, and a state saved while another probe had changed it would be restored wrongly.

The models probed are the private replicas of :mod:`cnnviz_widgets.replica`, never the user's object.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

Layer = tuple[str, nn.Module]

GUIDED_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()

# Words of torch's messages about an input the network cannot take (wrong size, channels or dimensions).
_SHAPE_WORDS = ("size", "shape", "dimension", "channels", "expected input", "mat1 and mat2")


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock of ``model``, weakly keyed so it dies with the model; re-entrant, so nested probes work."""
    with _LOCKS_LOCK:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


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

        A failure of the network about the input's shape is reported as a ValueError about ``x`` (a
        picture too small for the network's pooling, or not what its first layer expects), with the
        network's own error chained; any other failure (out of memory, a bug in the model) is raised as is.
        """
        try:
            return self.model(x)
        except _StopForward:
            return None
        except RuntimeError as error:
            message = str(error)
            if isinstance(error, torch.OutOfMemoryError) or not any(word in message.lower() for word in _SHAPE_WORDS):
                raise
            raise ValueError(
                f"x: {type(self.model).__name__} cannot run on an input of shape {tuple(x.shape)}: {message}"
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
    rewrite: Sequence[tuple[nn.Module, Callable]] = (),
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
    rewrite: ``(module, function)`` pairs: each call of the module ends with ``function(module, args, kwargs,
        output)``, and what it returns, unless None, is the output the network goes on with. For what the
        module computes but does not return (attention weights): the function recomputes them from the
        module's input and puts them in the graph that leads to the logits.
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

    with model_lock(model), preserved_state(model):
        try:
            for name, module in outputs:
                handles.append(module.register_forward_hook(output_hook(name)))
            for name, module in inputs:
                handles.append(module.register_forward_pre_hook(input_hook(name)))
            for module, function in rewrite:
                handles.append(module.register_forward_hook(function, with_kwargs=True))
            if guide_activations:
                for module in model.modules():
                    if isinstance(module, GUIDED_ACTIVATIONS):
                        handles.append(module.register_forward_hook(guide))
            with torch.set_grad_enabled(differentiable or guide_activations):
                yield capture
        finally:
            for handle in handles:
                handle.remove()


@dataclass(frozen=True)
class LayerCall:
    """A submodule the forward pass called: its output shape (at its last call; None if not a tensor), and
    whether the logits depend on that output."""

    name: str
    module: nn.Module
    shape: tuple[int, ...] | None
    feeds_logits: bool


def trace_calls(model: nn.Module, x: Tensor, to_logits: Callable[[object], Tensor]) -> list[LayerCall]:
    """Every submodule one forward pass of ``x`` calls, in the order of their first call.

    The pass is differentiable with respect to each spatial ``(N, C, h, w)`` output, so that one backward
    says which of them the logits depend on: a layer the forward calls but whose output goes nowhere (an
    auxiliary head, a computed-and-dropped branch) is no place for Grad-CAM.
    """
    names = {module: name for name, module in model.named_modules() if name}
    order: dict[str, nn.Module] = {}
    shapes: dict[str, tuple[int, ...] | None] = {}
    spatial: dict[str, Tensor] = {}
    handles = []

    def record(module, args, output):
        name = names[module]
        order.setdefault(name, module)
        if not isinstance(output, Tensor):
            shapes[name] = None
            return None
        shapes[name] = tuple(output.shape[1:])
        if output.dim() != 4 or not output.is_floating_point():
            return None
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        spatial[name] = output
        # The network gets a copy, so an in-place op further on cannot rewrite the tensor differentiated.
        return output.clone()

    with model_lock(model), preserved_state(model):
        try:
            for module in names:
                handles.append(module.register_forward_hook(record))
            with torch.enable_grad():
                logits = to_logits(Capture(model).run(x))
                tracked = list(spatial.values())
                gradients = [None] * len(tracked)
                if tracked and logits.requires_grad:
                    # A random direction: no layer's gradient can cancel out by chance, as with a plain sum.
                    direction = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0)).to(logits)
                    gradients = torch.autograd.grad((logits * direction).sum(), tracked, allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()
    feeding = {name for name, gradient in zip(spatial, gradients) if gradient is not None}
    return [LayerCall(name, module, shapes[name], name in feeding) for name, module in order.items()]
