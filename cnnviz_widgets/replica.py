"""The user's model is theirs: every computation runs on a private replica of it.

A model in a notebook is alive: the user trains it in the next cell while a panel computes, or calls a
function from another thread. Computing on the user's object would show them, even for a moment, eval
mode, frozen parameters and hooks (a training step taken then gives some parameters no gradient). So the
first use of a model makes a deep copy of it, kept in eval mode with every parameter frozen, and every
method runs there. The user's object is only ever read.

Replicas follow the user's training: before each use, a fingerprint of the model (each parameter's and
buffer's identity, storage and in-place version counter, and the identity of every submodule) is compared
with the one the replica was copied from. Changed values are copied over in place; a changed structure
(a layer replaced, the model moved to another device) makes a new copy. Each fingerprint seen for the first
time starts a new ``generation``, so caches keyed on it never serve a result of the old weights.

There is one :class:`Replicas` per user model, weakly keyed, so it dies with the model. It holds one replica
per purpose: ``VIEWS`` for quick answers (public functions, a panel's live views) and ``WORK`` for long
tasks (occlusion maps, patterns, a pass over a dataset), so a long task never holds up the live views.
Each purpose has its own lock: one computation at a time on a replica.
"""

from __future__ import annotations

import copy
import threading
import weakref
from contextlib import contextmanager
from typing import Hashable, Iterator

import torch
from torch import Tensor, nn

from .probe import model_lock

VIEWS = "views"
WORK = "work"
PURPOSES = (VIEWS, WORK)

Fingerprint = tuple


def fingerprint(model: nn.Module) -> Fingerprint:
    """What changes when the model's weights or structure change; costs a walk over its tensors, no copy.

    ``_version`` counts in-place writes (an optimiser step, ``load_state_dict``, BatchNorm statistics
    updated by a train-mode forward); identity and storage change when a tensor is replaced or moved.
    The modules' plain settings (a dropout's ``p``, a flag the forward reads) count too; their train/eval
    mode does not, since replicas always compute in eval mode.
    """
    modules, tensors = [], []
    # One walk over the modules (parameters() and buffers() would each walk them again): this runs before
    # every computation, and costs 1.5 ms on EfficientNet-Lite0 done the long way.
    for module in model.modules():
        modules.append((id(module), _settings(module)))
        for t in (*module._parameters.values(), *module._buffers.values()):
            if t is not None:
                tensors.append((id(t), t._version, t.data_ptr(), t.dtype, t.device, t.shape))
    return tuple(modules), tuple(tensors)


_PLAIN_TYPES = frozenset((bool, int, float, str, type(None)))


def _settings(module: nn.Module) -> tuple:
    return tuple((key, value) for key, value in vars(module).items() if type(value) in _PLAIN_TYPES and key != "training")


def _structure(fingerprint_: Fingerprint) -> tuple:
    modules, tensors = fingerprint_
    return modules, tuple((identity, dtype, device, shape) for identity, _, _, dtype, device, shape in tensors)


def _deep_copy(model: nn.Module) -> nn.Module:
    """A frozen eval-mode copy. Tensors that are not graph leaves (e.g. the weight ``weight_norm`` computes
    in a forward) cannot be deep-copied, so they are copied detached."""
    memo = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    try:
        replica = copy.deepcopy(model, memo)
    except Exception as error:  # noqa: BLE001 - any failure means the same thing to the user
        raise TypeError(
            f"model: cannot make a private copy of {type(model).__name__} (copy.deepcopy failed: {error}); "
            "the functions and panels compute on a copy so that your model is never touched"
        ) from error
    for module in replica.modules():
        _drop_observers(module)
    replica.eval()
    for parameter in replica.parameters():
        parameter.requires_grad_(False)
        parameter.grad = None
    return replica


HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _drop_observers(module: nn.Module) -> None:
    """Remove the user's hooks from a replica's module: they observe the user's own passes (a list of
    activations they fill, a check they run) and must not fire for ours. Hooks that are part of what the
    module computes (``weight_norm``, ``spectral_norm``) are objects of ``torch.nn.utils`` and stay."""
    for attribute in HOOK_DICTS:
        hooks = getattr(module, attribute, None)
        if not hooks:
            continue
        for key in [key for key, hook in hooks.items() if not type(hook).__module__.startswith("torch.nn.utils")]:
            del hooks[key]
            for other in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
                getattr(module, other, {}).pop(key, None)


def _copy_values(replica: nn.Module, model: nn.Module) -> None:
    _VALUE_COPIES[replica] = _VALUE_COPIES.get(replica, 0) + 1
    with torch.no_grad():
        for mine, theirs in zip(
            [*replica.parameters(), *replica.buffers()], [*model.parameters(), *model.buffers()]
        ):
            mine.copy_(theirs)


class Replicas:
    """The private replicas of one user model (see the module's docstring)."""

    def __init__(self, model: nn.Module):
        self._model = weakref.ref(model)
        self._lock = threading.Lock()
        self._purpose_locks = {purpose: threading.RLock() for purpose in PURPOSES}
        self._replicas: dict[str, nn.Module] = {}
        self._synced: dict[str, Fingerprint] = {}
        self._seen: Fingerprint | None = None
        self._generation = 0

    def _user_model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError("the model these replicas follow no longer exists")
        return model

    def check(self) -> int:
        """The generation of the user's weights now: it grows by one each time they are seen changed."""
        return self._observe(fingerprint(self._user_model()))

    def _observe(self, seen: Fingerprint) -> int:
        with self._lock:
            if seen != self._seen:
                if self._seen is not None:
                    self._generation += 1
                self._seen = seen
            return self._generation

    @property
    def generation(self) -> int:
        return self._generation

    @contextmanager
    def borrow(self, purpose: str = VIEWS) -> Iterator[nn.Module]:
        """The replica for ``purpose``, brought up to date with the user's model, locked for the block."""
        if purpose not in PURPOSES:
            raise ValueError(f"purpose: expected one of {PURPOSES}, got {purpose!r}")
        with self._purpose_locks[purpose]:
            model = self._user_model()
            current = fingerprint(model)
            self._observe(current)
            replica = self._replicas.get(purpose)
            synced = self._synced.get(purpose)
            if replica is None or _structure(synced) != _structure(current):
                replica = _deep_copy(model)
                _REPLICA_IDS.add(replica)
                self._replicas[purpose] = replica
            elif synced != current:
                _copy_values(replica, model)
            self._synced[purpose] = current
            yield replica

    def release(self) -> None:
        """Drop the replicas now (they are made again on the next use)."""
        for purpose in PURPOSES:
            with self._purpose_locks[purpose]:
                self._replicas.pop(purpose, None)
                self._synced.pop(purpose, None)


_REGISTRY: "weakref.WeakKeyDictionary[nn.Module, Replicas]" = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()
_REPLICA_IDS: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
_VALUE_COPIES: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


def replicas_of(model: nn.Module) -> Replicas:
    """The one :class:`Replicas` of ``model``, shared by every function and panel that uses it."""
    with _REGISTRY_LOCK:
        replicas = _REGISTRY.get(model)
        if replicas is None:
            replicas = _REGISTRY[model] = Replicas(model)
        return replicas


def is_replica(model: nn.Module) -> bool:
    return model in _REPLICA_IDS


def weights_state(model: nn.Module) -> Hashable:
    """What changes when ``model``'s weights do, for caches of what is derived from them (the fast copy). A
    replica's weights change only when the user's are copied over, so for a replica this is a count of
    those copies, read in no time; for any other module, its :func:`fingerprint`."""
    if is_replica(model):
        return ("copies", _VALUE_COPIES.get(model, 0))
    return fingerprint(model)


@contextmanager
def borrow(model: nn.Module, purpose: str = VIEWS) -> Iterator[nn.Module]:
    """What a method computes on: the private replica of ``model`` (or ``model`` itself if it is a replica,
    as when a panel hands one to a method), up to date and locked for the block."""
    if is_replica(model):
        with model_lock(model):
            yield model
        return
    with replicas_of(model).borrow(purpose) as replica:
        yield replica
