"""The user's model is theirs: every computation runs on a private replica of it.

A model in a notebook is alive: the user trains it in the next cell while a panel computes, or calls a
function from another thread. Computing on the user's object would show them, even for a moment, eval
mode, frozen parameters and hooks (a training step taken then gives some parameters no gradient). So the
first use of a model makes a deep copy of it, kept in eval mode with every parameter frozen, and every
method runs there. The user's object is only ever read.

Replicas follow the user's training: before each use, a :func:`fingerprint` of the model is compared with
the one the replica was copied from. Changed values are copied over in place; a changed structure (a layer
replaced, the model moved to another device) makes a new copy. Each fingerprint seen for the first time
starts a new *generation*, so caches keyed on it never serve a result of the old weights. One watcher thread
per model (:meth:`Replicas.watch`) tells whoever listens when the weights changed and held still.

There is one :class:`Replicas` per user model, weakly keyed, so it dies with the model. It holds one replica
per purpose: ``VIEWS`` for quick answers (public functions, a panel's live views) and ``WORK`` for long
tasks (occlusion maps, patterns, a pass over a dataset), so a long task never holds up the live views.
Each purpose has its own lock: one computation at a time on a replica.

Four names for "these weights", each for one job:

==========================  ===========================================  ===========================================
name                        what it is                                   why it exists
==========================  ===========================================  ===========================================
:func:`fingerprint`         identity, version counter and storage of     sees every change of the user's model, and
                            every tensor, a CRC-32 of its values, the    tells a change of values (copy them over)
                            modules' settings                            from a change of structure (copy anew)
``generation``              a count of the fingerprints seen, per model  the key of in-memory caches: a small int
                            (:meth:`Replicas.check`)                     that only grows
:func:`weights_state`       for a replica, how many times values were    what the fast copy and the cuts of a
                            copied over into it                          replica are keyed on, read in no time
``cache.weights_digest``    SHA-256 of every tensor's name and bytes     the disk cache's key: the same weights in
                                                                         another process give the same digest
==========================  ===========================================  ===========================================
"""

from __future__ import annotations

import atexit
import copy
import logging
import threading
import weakref
import zlib
from contextlib import contextmanager
from typing import Callable, Hashable, Iterator

import torch
from torch import Tensor, nn

from .probe import model_lock

VIEWS = "views"
WORK = "work"
PURPOSES = (VIEWS, WORK)

Fingerprint = tuple


def fingerprint(model: nn.Module) -> Fingerprint:
    """What changes when the model's weights or structure change; costs a walk over its tensors and a CRC-32
    of their values, no copy.

    ``_version`` counts in-place writes (an optimiser step, ``load_state_dict``, BatchNorm statistics
    updated by a train-mode forward); identity and storage change when a tensor is replaced or moved. Writes
    through ``.data`` (hand-written training, EMA updates, pruning, weight surgery) go to another tensor
    that shares the storage, with a version counter of its own: only the values show them. A CRC-32 of each
    tensor's bytes changes with any change of one element (CRC-32 detects every error burst of 32 bits or
    fewer), where a sample of elements could miss it. It reads memory at several GB/s: 5 ms for
    EfficientNet-Lite0's 4.7 M values and 26 ms for ResNet50's 25.6 M on this project's 2-core machine.
    The modules' plain settings (a dropout's ``p``, a flag the forward reads) count too; their train/eval
    mode does not, since replicas always compute in eval mode.
    """
    modules, tensors = [], []
    # One walk over the modules (parameters() and buffers() would each walk them again).
    for module in model.modules():
        modules.append((id(module), _settings(module)))
        for t in (*module._parameters.values(), *module._buffers.values()):
            if t is not None:
                tensors.append((id(t), t._version, t.data_ptr(), t.dtype, t.device, t.shape, values_checksum(t)))
    return tuple(modules), tuple(tensors)


def values_checksum(tensor: Tensor) -> int:
    """A CRC-32 of the tensor's values, read in place when it is a contiguous CPU tensor (a GPU tensor is
    copied to the host first: a bus that moves 10 GB/s adds less than the checksum itself)."""
    values = tensor.detach()
    if values.is_quantized:
        values = values.int_repr()
    if values.layout != torch.strided or values.device.type == "meta":
        return 0
    return zlib.crc32(values.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


_PLAIN_TYPES = frozenset((bool, int, float, str, type(None)))


def _settings(module: nn.Module) -> tuple:
    return tuple((key, value) for key, value in vars(module).items() if type(value) in _PLAIN_TYPES and key != "training")


def _structure(fingerprint_: Fingerprint) -> tuple:
    modules, tensors = fingerprint_
    return modules, tuple((identity, dtype, device, shape) for identity, _, _, dtype, device, shape, _ in tensors)


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


WATCH_SECONDS = 1.0
"""How often a watched model is looked at: its fingerprint costs a few milliseconds (see :func:`fingerprint`),
so the views follow a training loop within a second or two."""

log = logging.getLogger(__name__)
_EXITING = threading.Event()
_WATCHERS: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


@atexit.register
def _stop_watchers() -> None:
    """End the watchers before the interpreter finalises: a daemon thread caught inside a torch call then is
    killed in C++ code, which aborts the process ("terminate called without an active exception")."""
    _EXITING.set()
    for thread in list(_WATCHERS):
        thread.join(5.0)


class Listeners:
    """Callables held weakly: a bound method lives as long as its object, a function as long as its caller
    keeps it. A dashboard nobody holds any more is not kept alive, nor woken, by the model it watched."""

    def __init__(self):
        self._refs: list[weakref.ref] = []
        self._lock = threading.Lock()

    def add(self, listener: Callable) -> None:
        if not callable(listener):
            raise TypeError(f"listener: expected a callable, got {type(listener).__name__}")
        ref = weakref.WeakMethod(listener) if hasattr(listener, "__self__") and hasattr(listener, "__func__") else weakref.ref(listener)
        with self._lock:
            self._refs.append(ref)

    def discard(self, listener: Callable) -> None:
        with self._lock:
            self._refs = [ref for ref in self._refs if ref() is not None and ref() != listener]

    def alive(self) -> list[Callable]:
        """The listeners still alive; the dead ones are dropped."""
        with self._lock:
            pairs = [(ref, ref()) for ref in self._refs]
            self._refs = [ref for ref, listener in pairs if listener is not None]
            return [listener for _, listener in pairs if listener is not None]

    def notify(self, *args) -> None:
        """Call every listener; one that raises is logged and dropped, and the others are still called."""
        for listener in self.alive():
            try:
                listener(*args)
            except Exception:  # noqa: BLE001 - one broken listener must not silence the others
                log.exception("a listener of the model's weights failed and was dropped: %r", listener)
                self.discard(listener)

    def clear(self) -> None:
        with self._lock:
            self._refs.clear()


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
        self._looks = threading.local()
        self._listeners = Listeners()
        self._watcher: threading.Thread | None = None

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

    @contextmanager
    def request(self) -> Iterator[int]:
        """One look at the user's weights for a whole request, yielding their generation: every borrow made in
        the block on this thread trusts that look instead of taking its own, so a request that borrows a
        replica three times reads the weights' checksums once. Nested requests share the outer look."""
        if getattr(self._looks, "look", None) is not None:
            yield self._looks.look[1]
            return
        seen = fingerprint(self._user_model())
        self._looks.look = (seen, self._observe(seen))
        try:
            yield self._looks.look[1]
        finally:
            self._looks.look = None

    @contextmanager
    def borrow(self, purpose: str = VIEWS) -> Iterator[nn.Module]:
        """The replica for ``purpose``, brought up to date with the user's model, locked for the block."""
        if purpose not in PURPOSES:
            raise ValueError(f"purpose: expected one of {PURPOSES}, got {purpose!r}")
        with self._purpose_locks[purpose]:
            model = self._user_model()
            look = getattr(self._looks, "look", None)
            if look is not None:
                current = look[0]
            else:
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

    def watch(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(generation)`` from the model's watcher thread once the user's weights have changed
        and then held still for one more look (a training loop in progress is not chased step by step).

        The listener is held weakly (see :class:`Listeners`). One thread watches the model, whoever listens;
        it ends when its last listener is gone or the model is collected."""
        self._listeners.add(listener)
        # The weights of now are the ones the listener knows: a change made before the first look is a change.
        self.check()
        with self._lock:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="cnnviz-weights-watch", daemon=True)
                _WATCHERS.add(self._watcher)
                self._watcher.start()

    def unwatch(self, listener: Callable[[int], None]) -> None:
        self._listeners.discard(listener)

    @property
    def watched(self) -> bool:
        """Whether the watcher thread runs."""
        with self._lock:
            return self._watcher is not None

    def _watch(self) -> None:
        shown = self._generation
        last = None
        while True:
            exiting = _EXITING.wait(WATCH_SECONDS)
            with self._lock:
                if exiting or not self._listeners.alive():
                    self._watcher = None
                    return
            try:
                now = self.check()
            except RuntimeError:
                with self._lock:
                    self._watcher = None
                return
            if now != shown and now == last:
                shown = now
                self._listeners.notify(now)
            last = now


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
