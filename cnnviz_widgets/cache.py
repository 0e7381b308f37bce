"""Results of a pass over a test set, kept on disk: reopening a dashboard on the same model and data reads
them back instead of running the model over tens of thousands of pictures again.

An entry's key is a digest of everything the results depend on: every weight and buffer of the model, the
list of pictures (a file's path, size and modification time; an in-memory picture's pixels), the
preprocessing and the logits converter. Change any of them and the key changes, so stale results are never
read. Entries are ``.npz`` files in the platform's user cache folder unless ``cache=`` names another one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

KEY_VERSION = b"cnnviz-pass-2"
"""Changes with what an entry holds (version 2: the most probable classes), so that no older entry is read."""


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


def weights_digest(model: nn.Module) -> bytes:
    """A digest of every parameter and buffer, by name: two models with the same weights give the same one."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


def callable_digest(function) -> bytes:
    """What identifies a preprocessing or output function: a torchvision pipeline's description, or a
    function's name and compiled code (a lambda edited in the notebook gets a new digest)."""
    if function is None:
        return b"none"
    code = getattr(function, "__code__", None)
    if code is not None:
        return f"{function.__module__}.{function.__qualname__}".encode() + code.co_code + repr(code.co_consts).encode()
    described = repr(function)
    if " at 0x" in described:
        described = f"{type(function).__module__}.{type(function).__qualname__}"
    return described.encode()


def key(*parts: bytes) -> str:
    digest = hashlib.sha256(KEY_VERSION)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


class DiskCache:
    """``.npz`` entries by key in ``folder``; a folder that cannot be written only costs the caching."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, entry: str) -> Path:
        return self.folder / f"pass-{entry}.npz"

    def load(self, entry: str) -> dict[str, np.ndarray] | None:
        path = self.path(entry)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError):
            return None

    def save(self, entry: str, arrays: dict[str, np.ndarray]) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # Written aside and renamed: a dashboard opened meanwhile never reads half a file.
            with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".npz", delete=False) as handle:
                np.savez(handle, **arrays)
            os.replace(handle.name, self.path(entry))
        except OSError:
            return
