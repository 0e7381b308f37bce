"""Results of a pass over a test set, kept on disk: reopening a dashboard on the same model and data reads
them back instead of running the model over tens of thousands of pictures again.

An entry's key is a digest of everything the results depend on: every weight and buffer of the model, the
list of pictures (a file's path, size and modification time; an in-memory picture's pixels), the
preprocessing and the logits converter (see :mod:`.identity`). Change any of them and the key changes, so
stale results are never read; a preprocessing that cannot be identified exactly (a random crop, an open file)
keeps its results off the disk. Entries are ``.npz`` files in the platform's user cache folder unless
``cache=`` names another one, at most 2 GB of them unless ``cache_size=`` or ``CNNVIZ_CACHE_SIZE`` says
otherwise: each new entry evicts the least recently used ones beyond that (one entry per model, dataset and
epoch of training is about 250 MB for 50,000 pictures).
"""

from __future__ import annotations

import hashlib
import numbers
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from decimal import Decimal
from pathlib import Path
from typing import Callable, Hashable

import numpy as np
import torch
from torch import nn

from . import identity

KEY_VERSION = b"cnnviz-pass-4"
"""Changes with what an entry holds or how its key is made (version 2: the most probable classes; 3: the
preprocessing identified by its state; 4: what diagnosis needs of each softmax and the inputs' digests), so
that no older entry is read."""

DEFAULT_CACHE_SIZE = 2 * 10**9
"""Bytes of entries the cache folder keeps by default: 2 GB."""
CACHE_SIZE_VARIABLE = "CNNVIZ_CACHE_SIZE"
"""The environment variable that sets the cache folder's size when ``cache_size=`` is not given."""
SIZE_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def default_folder() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("cnnviz_widgets"))


def check_cache(cache) -> Path | None:
    """``cache=`` as given: None (the default folder), False (no disk cache) or a folder."""
    if cache is None:
        return default_folder()
    if cache is False:
        return None
    if isinstance(cache, (str, os.PathLike)):
        return Path(cache)
    raise TypeError(f"cache: expected None (the default folder), False (no cache) or a folder path, got {type(cache).__name__}")


def check_cache_size(cache_size=None) -> int:
    """``cache_size=`` as given -> bytes: a positive int, or a string such as ``"500MB"``, ``"2GB"`` or
    ``"1.5GiB"`` (kB, MB, GB, TB count in powers of 1000, KiB, MiB, GiB, TiB in powers of 1024). None: the
    environment variable ``CNNVIZ_CACHE_SIZE``, in the same forms, or 2 GB when it is not set."""
    if cache_size is None:
        given = os.environ.get(CACHE_SIZE_VARIABLE, "").strip()
        return _size(given, CACHE_SIZE_VARIABLE) if given else DEFAULT_CACHE_SIZE
    return _size(cache_size, "cache_size")


def _size(given, name: str) -> int:
    if isinstance(given, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b|b)?\s*", given, re.IGNORECASE)
        if match is None:
            raise ValueError(f"{name}: expected a size such as '500MB', '2GB' or '1.5GiB', or a number of bytes, got {given!r}")
        size = int(Decimal(match[1]) * SIZE_UNITS[(match[2] or "").lower()])
    elif isinstance(given, numbers.Integral) and not isinstance(given, bool):
        size = int(given)
    else:
        raise TypeError(f"{name}: expected a number of bytes (an int) or a size such as '500MB', got {type(given).__name__}")
    if size <= 0:
        raise ValueError(f"{name}: expected a positive size, got {given!r}; cache=False keeps no disk cache")
    return size


def weights_digest(model: nn.Module) -> bytes:
    """A digest of every parameter and buffer, by name: two models with the same weights give the same one."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


def callable_digest(function) -> bytes | None:
    """What identifies a preprocessing or output function in every kernel: its code, settings and state (see
    :mod:`.identity`); None when that cannot be told exactly, and its results must not be kept on disk
    (:func:`.identity.uncertain_reason` says why)."""
    return identity.digest(function)


def key(*parts: bytes) -> str:
    digest = hashlib.sha256(KEY_VERSION)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


class DiskCache:
    """``.npz`` entries by key in ``folder``, at most ``cache_size`` bytes of them (see :func:`check_cache_size`):
    each save evicts the least recently used entries beyond it. A folder that cannot be written only costs the
    caching."""

    def __init__(self, folder: Path, cache_size: int | str | None = None):
        self.folder = Path(folder)
        self.cache_size = check_cache_size(cache_size)

    def path(self, entry: str) -> Path:
        return self.folder / f"pass-{entry}.npz"

    def load(self, entry: str) -> dict[str, np.ndarray] | None:
        path = self.path(entry)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except (OSError, ValueError):
            return None
        _mark_used(path)
        return arrays

    def save(self, entry: str, arrays: dict[str, np.ndarray]) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # Written aside and renamed: a dashboard opened meanwhile never reads half a file.
            with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".npz", delete=False) as handle:
                np.savez(handle, **arrays)
            os.replace(handle.name, self.path(entry))
        except OSError:
            return
        _mark_used(self.path(entry))
        self.evict(keep=entry)

    def evict(self, keep: str | None = None) -> None:
        """Remove the least recently used entries until those left fit in ``cache_size``; never ``keep``, the
        entry just written, even alone above the size. Another process's eviction may remove files meanwhile."""
        entries = []
        try:
            with os.scandir(self.folder) as found:
                for item in found:
                    if item.name.startswith("pass-") and item.name.endswith(".npz"):
                        status = item.stat()
                        entries.append((status.st_mtime_ns, item.name, status.st_size))
        except OSError:
            return
        total = sum(size for *_, size in entries)
        kept = self.path(keep).name if keep is not None else None
        for _, name, size in sorted(entries):
            if total <= self.cache_size:
                break
            if name == kept:
                continue
            try:
                os.remove(self.folder / name)
            except FileNotFoundError:
                pass
            except OSError:
                continue
            total -= size


def _mark_used(path: Path) -> None:
    """Sets the entry's modification time to now: eviction goes by it, since access times are often not kept
    (``noatime``, ``relatime``). Nanoseconds from the clock, not the file system's coarser tick, keep the order
    of two uses within a millisecond."""
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now))
    except OSError:
        pass


WAIT_POLL_SECONDS = 0.1
"""How often a caller waiting on another's computation looks at its own Stop: well inside the half second
a Stop may take."""


class _Flight:
    """A computation under way: its owner thread, the fraction it last reported, and when it ends."""

    def __init__(self):
        self.owner = threading.get_ident()
        self.fraction = 0.0
        self.ended = threading.Event()


class LRUCache:
    """A thread-safe least-recently-used cache whose computations are single-flight.

    ``get(key, compute)`` computes each key once: callers that ask for a key while another computes it wait
    for that result instead of computing it again (a second pass over 50,000 pictures, or a second Score-CAM,
    costs minutes). A waiter stays stoppable: with ``checkpoint=`` it is called while waiting, with the
    owner's progress, and a Stop raised there ends the wait. If the owner fails or is stopped, nothing is
    stored and the first waiter computes the key itself: one panel's Stop never becomes another's error.
    """

    def __init__(self, entries: int):
        self._entries = entries
        self._values: OrderedDict = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[..., object], checkpoint: Callable[..., None] | None = None):
        """The value of ``key``, computed by ``compute()`` if nobody has yet. With ``checkpoint``, ``compute``
        is called as ``compute(checkpoint)`` with a checkpoint that also reports progress to the waiters."""
        while True:
            with self._lock:
                if key in self._values:
                    self._values.move_to_end(key)
                    return self._values[key]
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    break
            if flight.owner == threading.get_ident():
                raise RuntimeError(f"cache: computing {key!r} asked for {key!r} again: a computation cannot wait on itself")
            while not flight.ended.wait(WAIT_POLL_SECONDS):
                if checkpoint is not None:
                    checkpoint(flight.fraction)
        try:
            value = compute() if checkpoint is None else compute(_reporting(flight, checkpoint))
            with self._lock:
                self._values[key] = value
                self._values.move_to_end(key)
                while len(self._values) > self._entries:
                    self._values.popitem(last=False)
            return value
        finally:
            with self._lock:
                del self._flights[key]
            flight.ended.set()

    def clear(self) -> None:
        """Forget every value (computations under way still hand theirs to their callers)."""
        with self._lock:
            self._values.clear()


def _reporting(flight: _Flight, checkpoint: Callable[..., None]) -> Callable[..., None]:
    def report(fraction, *args, **kwargs):
        flight.fraction = fraction
        return checkpoint(fraction, *args, **kwargs)

    return report
