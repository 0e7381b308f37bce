"""Two sessions on the same labelled images, a reference model and the model compared with it: what the
Changes tab asks of both at once (the flips, the layers' similarity), cached per pair of weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..cache import LRUCache
from ..comparison import ModelDiff, diff_of
from ..layer_similarity import layer_similarity
from .session import Session

SIMILARITY_IMAGES = 512
"""The images the layers' CKA reads, spread evenly over the set: a few hundred give a stable CKA (Kornblith
et al. 2019 used 500 to 10,000), and a 50,000-image test set would make the matrix take two forward passes
of everything."""
SIMILARITY_BATCH = 64
PAIR_ENTRIES = 8


def reference_session(reference, session: Session, preprocess=None, *, output=None, cache=None, cache_size=None) -> Session:
    """A session of model ``reference`` on ``session``'s images and labels, the pictures read by ``preprocess``
    (inputs given as tensors go to both models as they are). Its classes are named by ``session``'s
    (:class:`SessionPair` checks that the two models have as many)."""
    return Session(
        reference, session.pass_images(), preprocess=None if session.given_inputs is not None else preprocess,
        labels=session.labels, output=output, cache=cache, cache_size=cache_size,
    )  # fmt: skip


class SessionPair:
    """``reference`` (model A) and ``session`` (model B) on the same images, labels and classes.

    Every result is computed once per pair of weights: either model's change of weights makes it new, as a
    session's own caches are.
    """

    def __init__(self, reference: Session, session: Session):
        if reference.count != session.count:
            raise ValueError(f"reference: {reference.count} images, but the model compared has {session.count}; give both the same images")
        if session.labels is None:
            raise ValueError("labels: comparing two models needs the true class of each image; pass labels=")
        if reference.num_classes != session.num_classes:
            raise ValueError(
                f"reference: outputs {reference.num_classes} classes, but the model outputs {session.num_classes}; "
                "both models must classify the same classes"
            )
        self.reference = reference
        self.session = session
        self._cache = LRUCache(PAIR_ENTRIES)

    def _cached(self, key: tuple, compute, checkpoint=None):
        with self.reference.replicas.request() as generation_a, self.session.replicas.request() as generation_b:
            return self._cache.get((generation_a, generation_b, *key), compute, checkpoint)

    def diff(self, checkpoint=None) -> ModelDiff:
        """What changed from the reference to the model (:func:`~cnnviz_widgets.comparison.model_diff`), from
        each session's pass over the images: the reference's pass fills the first half of the progress."""
        return self._cached(("diff",), lambda checkpoint=None: diff_of(self.reference, self.session, checkpoint, self.session.class_names), checkpoint)

    def similarity_images(self) -> np.ndarray:
        """The indices of the images the layers' CKA reads (all of them up to ``SIMILARITY_IMAGES``)."""
        count = self.session.count
        return np.unique(np.linspace(0, count - 1, min(count, SIMILARITY_IMAGES)).round().astype(np.int64))

    def layer_similarity(self, checkpoint=None) -> pd.DataFrame:
        """Linear CKA between every conv layer of the reference (rows) and of the model (columns), on
        :meth:`similarity_images` (see :func:`~cnnviz_widgets.layer_similarity`)."""

        def compute(checkpoint=None) -> pd.DataFrame:
            indices = self.similarity_images()
            if self.session.given_inputs is not None:
                images = torch.cat([self.session.given_inputs[index] for index in indices])
            else:
                images = [self.session.pictures[int(index)] for index in indices]
            return layer_similarity(
                self.reference.model,
                self.session.model,
                images,
                [name for name, _ in self.reference.conv_layers()],
                [name for name, _ in self.session.conv_layers()],
                preprocess=(self.reference.preprocess, self.session.preprocess),
                batch_size=SIMILARITY_BATCH,
                output=(self.reference.output, self.session.output),
                checkpoint=checkpoint,
            )

        return self._cached(("layer_similarity",), compute, checkpoint)

    def clear(self) -> None:
        self._cache.clear()
