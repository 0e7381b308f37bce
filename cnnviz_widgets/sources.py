"""Where pictures come from: memory, a folder, a list of files, a torch Dataset. Read lazily, by index.

A test set of tens of thousands of pictures does not fit in memory as decoded pictures (a 256 px RGB picture
is 196 KB decoded, 20 KB as a JPEG), so a source keeps paths or the user's dataset and decodes a picture
only when it is asked for, with a small cache for the ones on screen.

A folder is read as torchvision's ``ImageFolder`` reads it: when every picture sits in a subfolder of the
root, the subfolders' names, sorted, are the classes and give the labels.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from . import identity as identities
from .render import to_picture

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DECODED_PICTURES = 256
"""Pictures kept decoded: a gallery page, a picker page and the pictures the panels show, many times over."""
MADE_WITH = ("loader", "transform", "target_transform", "transforms")
"""The attributes with which a torchvision Dataset makes its items out of its files."""


def default_preprocess(picture: Image.Image) -> Tensor:
    """Pixels in [0, 1], channels first: for models trained on unnormalised pictures."""
    array = np.asarray(picture, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def _picture(item, where: str) -> Image.Image:
    try:
        return to_picture(item)
    except (TypeError, ValueError) as error:
        raise type(error)(f"images: {where}: {error}") from None


class PictureSource(Sequence):
    """Pictures by index, decoded on demand: ``source[i]`` is an RGB PIL image.

    names: one name per picture (a file's path relative to the folder, a dict key, or the index);
    labels: the classes the source itself gives (subfolders, a Dataset's pairs), or None;
    class_names: the names of those classes (a folder's subfolders), or None;
    paths: each picture's file, absolute, when the pictures are files (a suspect to relabel is found by it).
    """

    def __init__(
        self, names: list[str], load, labels=None, class_names=None, identity=None, uncertain_reason=None, paths=None
    ):
        self.names = names
        self.paths = paths
        self._load = load
        self._identity = identity
        self._uncertain_reason = uncertain_reason
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.class_names = class_names
        self._decoded: OrderedDict[int, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.names)

    def identity(self) -> bytes | None:
        """What tells these pictures apart from any other list (for the disk cache): files' paths, sizes and
        modification times, or in-memory pixels, and a Dataset's class and transforms; None when it cannot be
        known exactly and cheaply (a Dataset that lists no files, a random transform)."""
        return None if self._identity is None else self._identity()

    def uncertain_reason(self) -> str | None:
        """Why :meth:`identity` is None, in words for the user; None when the pictures are identified."""
        if self._identity is None:
            return "images: the pictures cannot be identified without reading them all (a Dataset that lists no files)"
        return None if self._uncertain_reason is None else self._uncertain_reason()

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"image index {index} out of range 0..{len(self) - 1}")
        index %= len(self)
        with self._lock:
            if index in self._decoded:
                self._decoded.move_to_end(index)
                return self._decoded[index]
        picture = self._load(index)
        with self._lock:
            self._decoded[index] = picture
            while len(self._decoded) > DECODED_PICTURES:
                self._decoded.popitem(last=False)
        return picture


def _in_memory(items: list, names: list[str]) -> PictureSource:
    pictures = [_picture(item, f"picture {name!r}") for item, name in zip(items, names)]

    def identity() -> bytes:
        digest = hashlib.sha256()
        for picture in pictures:
            digest.update(str(picture.size).encode())
            digest.update(picture.tobytes())
        return digest.digest()

    return PictureSource(names, pictures.__getitem__, identity=identity)


def _files(paths: list[str], names: list[str], labels=None, class_names=None) -> PictureSource:
    """Pictures read from ``paths`` (absolute)."""

    def load(index: int) -> Image.Image:
        try:
            with Image.open(paths[index]) as opened:
                return opened.convert("RGB")
        except OSError as error:
            raise ValueError(f"images: cannot read {paths[index]!r} as a picture: {error}") from error

    def identity() -> bytes:
        digest = hashlib.sha256()
        for path in paths:
            status = os.stat(path)
            digest.update(f"{path}|{status.st_size}|{status.st_mtime_ns}\n".encode())
        return digest.digest()

    return PictureSource(names, load, labels, class_names, identity, paths=paths)


def folder_source(root) -> PictureSource:
    """Every picture under ``root``, recursively, in sorted path order; labels from subfolders as ImageFolder."""
    if not Path(root).is_dir():
        raise ValueError(f"images: {str(root)!r} is not a folder")
    root = os.path.realpath(root)
    relative = _picture_files(root)
    if not relative:
        raise ValueError(f"images: no pictures ({', '.join(PICTURE_SUFFIXES)}) found under {root!r}")
    labels = class_names = None
    if all(len(parts) > 1 for parts in relative):
        class_names = sorted({parts[0] for parts in relative})
        index = {name: k for k, name in enumerate(class_names)}
        labels = [index[parts[0]] for parts in relative]
    paths = [os.path.join(root, *parts) for parts in relative]
    return _files(paths, ["/".join(parts) for parts in relative], labels, class_names)


def _picture_files(root: str) -> list[tuple[str, ...]]:
    """The path of each picture file under ``root`` as its parts, sorted (as ``Path.rglob`` finds them:
    folders that are symbolic links are not entered). Strings, not ``Path`` objects: a folder of 50,000
    pictures is listed in a quarter of the time."""
    found, pending = [], [()]
    while pending:
        parts = pending.pop()
        with os.scandir(os.path.join(root, *parts)) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((*parts, entry.name))
                elif os.path.splitext(entry.name)[1].lower() in PICTURE_SUFFIXES and entry.is_file():
                    found.append((*parts, entry.name))
    return sorted(found)


def _dataset_source(dataset: Dataset) -> PictureSource:
    if not hasattr(dataset, "__len__"):
        raise TypeError("images: a Dataset without a length cannot be browsed by index; give a map-style Dataset")
    count = len(dataset)
    classes = getattr(dataset, "classes", None)
    first = dataset[0] if count else None
    paired = isinstance(first, (tuple, list))
    labels = None
    if paired and len(first) > 1:
        targets = getattr(dataset, "targets", None)
        # ImageFolder and most datasets list their targets: no need to decode every picture for the labels.
        labels = list(targets) if targets is not None and len(targets) == count else [int(dataset[i][1]) for i in range(count)]

    def load(index: int) -> Image.Image:
        item = dataset[index]
        return _picture(item[0] if isinstance(item, (tuple, list)) else item, f"item {index} of the Dataset")

    samples = getattr(dataset, "samples", None)
    identity = uncertain_reason = None
    if samples is not None and len(samples) == count:
        # ImageFolder and its kin list their files: the files identify the pictures, as for a folder, with the
        # Dataset's class and the transforms that make its items out of them (another Resize, other pictures).
        files = _files([os.path.abspath(path) for path, *_ in samples], [str(i) for i in range(count)]).identity

        def making() -> dict:
            """What makes the items, by the name the user knows it by; read when asked, as the user may
            have set another transform since."""
            made_with = {f"images.{name}": getattr(dataset, name) for name in MADE_WITH if hasattr(dataset, name)}
            return {"type(images)": type(dataset), **made_with}

        def identity() -> bytes | None:
            made = identities.digest(making())
            return None if made is None else files() + made

        def uncertain_reason() -> str | None:
            reasons = (identities.uncertain_reason(part, name) for name, part in making().items())
            return next((reason for reason in reasons if reason is not None), None)

    class_names = list(classes) if classes is not None else None
    return PictureSource([str(i) for i in range(count)], load, labels, class_names, identity, uncertain_reason)


def picture_source(images) -> PictureSource:
    """Any accepted form of pictures -> a :class:`PictureSource`.

    A folder (``str`` or ``Path``), a list of file paths, a list or ``{name: picture}`` dict of pictures (PIL
    images, arrays), one picture, or a torch Dataset whose items are pictures or ``(picture, label)`` pairs.
    """
    if isinstance(images, PictureSource):
        return images
    if isinstance(images, (str, Path)):
        return folder_source(images)
    if isinstance(images, Mapping):
        names = [str(name) for name in images]
        return _in_memory(list(images.values()), names)
    if isinstance(images, Dataset):
        return _dataset_source(images)
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
        return _in_memory([images], ["0"])
    if isinstance(images, Tensor):
        raise TypeError("images: a tensor of model inputs is not a picture source; pass it as it is to a Session")
    try:
        items = list(images)
    except TypeError:
        raise TypeError(
            "images: expected pictures (PIL images or uint8 arrays) in a list or dict, a folder, a list of file paths, "
            f"a torch Dataset or a tensor (N, C, H, W); got {type(images).__name__}"
        ) from None
    if items and all(isinstance(item, (str, Path)) for item in items):
        paths = [os.path.abspath(item) for item in items]
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            raise ValueError(f"images: {len(missing)} of the files given do not exist, e.g. {missing[0]!r}")
        return _files(paths, [os.path.basename(path) for path in paths])
    return _in_memory(items, [str(i) for i in range(len(items))])

