"""The pass over a test set on its own: run it once where the compute is (a GPU, a batch job), keep it in the
disk cache, and open the dashboard on it later with no forward pass over the images.

The entry written is the one :func:`~cnnviz_widgets.explore`, :func:`~cnnviz_widgets.diagnose` and
:func:`~cnnviz_widgets.model_diff` read: keyed on the model's weights, the pictures, the labels, the
preprocessing and the output converter, so the same model and images find it whatever ran the pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .checkpoint import progress_bar
from .data import Evaluation, check_device
from .inputs import check_positive_int, model_device
from .ray_pass import check_engine, import_ray
from .session.dataset_pass import PASS_BATCH_SIZE


@dataclass(frozen=True)
class Scan:
    """What :func:`scan` read and where it kept it.

    evaluation: predictions, top classes, confusion and what diagnosis needs (see :class:`~cnnviz_widgets.Evaluation`).
    embeddings: ``(N, D)`` float32, the classifier-input embedding of each image.
    kept: whether the results are in the disk cache (False with ``cache=False``, or when the pictures or the
        preprocessing cannot be identified for sure: ``not_kept`` says why).
    seconds: how long the pass took (0 when it was read back from the cache: ``from_cache``).
    device: where the pass ran (``"ray"`` for a Ray job).
    """

    evaluation: Evaluation
    embeddings: np.ndarray
    kept: bool
    not_kept: str | None
    from_cache: bool
    seconds: float
    device: str

    @property
    def images_per_second(self) -> float:
        """The pass's throughput (inf when it was read back from the cache)."""
        return len(self.evaluation.predictions) / self.seconds if self.seconds > 0 else float("inf")


def scan(
    model, images, preprocess=None, *, labels=None, class_names=None, output=None, cache=None, engine=None,
    device=None, batch_size: int | None = None, checkpoint=None,
) -> Scan:
    """Run the pass over ``images`` (predictions, top classes, embeddings, what diagnosis needs) and keep it in
    the disk cache, where a later ``explore``, ``diagnose`` or ``model_diff`` of the same model, images, labels
    and preprocessing reads it instead of running the model over the images again.

    images, preprocess, labels, class_names, output, cache: as :func:`~cnnviz_widgets.explore` takes them
        (labels are part of the cache entry: give the ones the dashboard will get, or none for a folder of
        class subfolders).
    engine: None (or ``"local"``) runs the pass here; ``"ray"`` runs it as a Ray Data job, on the Ray already
        started (``ray.init(address=...)``) or else on a local one; a Ray address (``"ray://head:10001"``,
        ``"auto"``) starts on that cluster. Each actor holds the model (its weights put once into the object
        store, on a GPU where the cluster has some) and reads its batches' files itself; the results come
        back in image order, the same as the local pass's to float rounding. Needs ``pip install
        'cnnviz_widgets[ray]'``.
    device: where the local pass runs: ``"cuda"``, ``"cuda:1"``, ``"cpu"``, a ``torch.device``; by default where the
        model lives. On CUDA the batches come from pinned memory without waiting for the copy, and the model
        (a private copy on that device) reads them in channels_last; on the CPU, the tuned fast copy runs.
    batch_size: images a batch (default 16 on the CPU, where small batches stay in its caches; take 128 or
        more on a GPU).
    checkpoint: ``checkpoint(fraction_done)``, called after each batch; raise from it to stop. Without it, a
        progress bar shows.
    The model is never touched: a private replica runs the pass.
    """
    from .session import Session

    address = check_engine(engine)
    if address is not None:
        import_ray()
        if device is not None:
            raise ValueError("device: a Ray job places its actors itself (on GPUs where the cluster has them); leave device= out")
    target = check_device(device)
    batch_size = PASS_BATCH_SIZE if batch_size is None else check_positive_int(batch_size, "batch_size")
    session = Session(model, images, preprocess=preprocess, class_names=class_names, labels=labels, output=output, cache=cache)
    try:
        entry = session.dataset_pass.entry()
        stored = entry is not None and session.dataset_pass.stored(entry)
        started = time.perf_counter()
        if checkpoint is not None:
            evaluation, embeddings = session.dataset_pass.results(
                checkpoint, device=target, batch_size=batch_size, ray_address=address
            )
        else:
            with progress_bar(session.count, "scan") as shown:
                evaluation, embeddings = session.dataset_pass.results(
                    shown, device=target, batch_size=batch_size, ray_address=address
                )
        seconds = 0.0 if stored else time.perf_counter() - started
        with session.replicas.borrow() as replica:
            ran_on = "ray" if address is not None else str(target or model_device(replica))
        return Scan(
            evaluation, embeddings, kept=entry is not None, not_kept=session.dataset_pass.not_kept, from_cache=stored,
            seconds=seconds, device=ran_on,
        )
    finally:
        session.close()
