"""The pass over every image of a session: predictions, the most probable classes and the classifier-input
embeddings from one run of the model, kept on disk, run once however many panels ask.

The pass is the longest thing a dashboard does (50,000 pictures take minutes), so it is single-flight: it
is one entry of the session's cache, and a panel that asks while another panel's pass runs waits for that
run, with its progress, instead of starting a second one (see :class:`~cnnviz_widgets.cache.LRUCache`). Its
results are read back from the disk cache when the model, the pictures, the labels, the preprocessing and
the output converter are all the same; when one of them cannot be identified for sure, nothing is read or
written, and :attr:`DatasetPass.not_kept` says why.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..cache import DiskCache, callable_digest, weights_digest
from ..cache import key as cache_key
from ..data import Evaluation, evaluate_and_embed
from ..identity import uncertain_reason
from ..ray_pass import ray_pass
from ..replica import VIEWS, WORK
from ..sprites import HOVER_MAX_SIDE, HOVER_THUMBNAIL_SIZE, Atlas, AtlasBuilder, build_atlas

# Images per batch of the pass over a test set. Activations that stay in the CPU's caches beat large
# batches: 2,000 JPEGs through EfficientNet-Lite0 read at 57 images/s in batches of 16, 48 in batches of 8
# and 35 in batches of 64.
PASS_BATCH_SIZE = 16
PASS_TOP_CLASSES = 10
"""What the pass over the images keeps of each image's probabilities: its 10 most probable classes (every
probability when there are no more classes). The views need only the predicted class's probability."""
STORED = tuple(field.name for field in dataclasses.fields(Evaluation))


class DatasetPass:
    """The pass of one session (``session``) over its images, with its disk cache (None: no disk cache)."""

    def __init__(self, session, disk: DiskCache | None):
        self._session = session
        self._disk = disk
        self.not_kept: str | None = None
        """Why the results of the pass are not kept on disk although a cache folder is set, or None."""
        self._tiled: Atlas | None = None

    def results(
        self, checkpoint=None, partial_every: float | None = None, *, device=None, batch_size: int = PASS_BATCH_SIZE,
        ray_address: str | None = None,
    ) -> tuple[Evaluation, np.ndarray]:
        """``(evaluation, embeddings)`` of every image.

        partial_every: seconds; if this call runs the pass, ``checkpoint(fraction_done, evaluation)`` also
        receives the evaluation of the images read so far every so often (see ``data.evaluate_and_embed``).
        device, batch_size, ray_address: where (on this machine, on a device, or as a Ray Data job at that
        address: see :mod:`~cnnviz_widgets.ray_pass`) and in batches of how many images the pass runs, if this
        call runs it (see :func:`~cnnviz_widgets.scan`); the results are the same to float rounding, and so is
        their cache entry."""

        def compute(checkpoint=None):
            entry = self.entry()
            stored = None if entry is None else self._disk.load(entry)
            if stored is not None:
                evaluation = Evaluation(**{name: stored.get(name) for name in STORED})
                return evaluation, stored["embeddings"]
            session = self._session
            if ray_address is not None:
                evaluation, embeddings = ray_pass(session, ray_address, batch_size, PASS_TOP_CLASSES, checkpoint)
                self._keep(entry, evaluation, embeddings)
                return evaluation, embeddings
            # Without labels the pass still gives predictions and embeddings; its confusion is not shown.
            labels = session.labels if session.labels is not None else np.zeros(session.count, dtype=np.int64)
            # The pass decodes every picture for the model: the hover thumbnails tiled meanwhile spare the
            # Projector a second reading of the folder when it opens. The pictures stay the same when the
            # weights change: one pass tiles them.
            tiles = None
            if session.given_inputs is None and self._tiled is None:
                tiles = AtlasBuilder(session.count, HOVER_THUMBNAIL_SIZE, HOVER_MAX_SIDE)
            with session.replicas.borrow(WORK) as replica:
                evaluation, embeddings = evaluate_and_embed(
                    replica, session.pass_images(), labels, batch_size=batch_size, preprocess=session.preprocess,
                    progress=False, output=session.output, checkpoint=checkpoint, partial_every=partial_every,
                    top_k=PASS_TOP_CLASSES, on_pictures=None if tiles is None else tiles.add, device=device,
                )
            if tiles is not None:
                self._tiled = tiles.atlas()
                self._tiled.png()
            self._keep(entry, evaluation, embeddings)
            return evaluation, embeddings

        return self._session.cached("once", ("pass",), compute, checkpoint)

    def _keep(self, entry: str | None, evaluation: Evaluation, embeddings: np.ndarray) -> None:
        if entry is not None:
            arrays = {name: getattr(evaluation, name) for name in STORED if getattr(evaluation, name) is not None}
            self._disk.save(entry, {**arrays, "embeddings": embeddings})

    def thumbnails(self) -> Atlas:
        """Every picture's hover thumbnail in one atlas, PNG encoded: the one a pass tiled as it read the
        pictures, or, when no pass read them here (its results came from the disk cache, or the images are
        tensors), one tiled from the pictures now."""

        def compute():
            return self._tiled or build_atlas(self._session.pictures, HOVER_THUMBNAIL_SIZE, HOVER_MAX_SIDE)

        return self._session.cached("once", ("thumbnails",), compute)

    def stored(self, entry: str) -> bool:
        """Whether the disk cache holds ``entry`` (a pass that ran before, here or elsewhere)."""
        return self._disk.path(entry).is_file()

    def entry(self) -> str | None:
        """The disk cache's key for this model, these pictures and this preprocessing; None when not cached."""
        if self._disk is None:
            return None
        session = self._session
        if session.given_inputs is not None:
            pictures = torch.cat(session.given_inputs).numpy().tobytes()
        else:
            pictures = session.pictures.identity()
            if pictures is None:
                self.not_kept = session.pictures.uncertain_reason()
                return None
        preprocess, output = callable_digest(session.preprocess), callable_digest(session.output)
        for digest, what in ((preprocess, "preprocess"), (output, "output")):
            if digest is None:
                self.not_kept = uncertain_reason(getattr(session, what), what)
                return None
        with session.replicas.borrow(VIEWS) as replica:
            weights = weights_digest(replica)
        labels = b"" if session.labels is None else session.labels.tobytes()
        return cache_key(weights, pictures, labels, preprocess, output)
