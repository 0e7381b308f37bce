"""The pass over a test set as a Ray Data job: the same results as the local pass, from a cluster's workers.

The pass is batch inference and nothing else, the job Ray Data's ``map_batches`` does with a pool of actors
that each hold the model. Here the model's private replica is put into the object store once, each actor
takes it from there (onto its GPU when the cluster has some), reads its batches' files itself, preprocesses
them as the session does and returns the logits, the classifier-input embeddings and each input's digest.
The driver puts the batches back in image order and turns them into the same :class:`~cnnviz_widgets.Evaluation`
the local pass gives, kept in the same disk-cache entry.

Ray is optional: ``pip install 'cnnviz_widgets[ray]'``. A Ray already started (``ray.init(address=...)``)
is used as it is; otherwise the pass starts one (a local one, or the address given as ``engine=``) and
shuts it down when it ends.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import torch
from PIL import Image

from .checkpoint import check
from .data import _Classified, _forward, _pooled, _to_device, input_digests
from .inputs import model_device
from .layers import called_layers, embedding_layer
from .outputs import logits_of
from .replica import WORK

INSTALL_HINT = "pip install 'cnnviz_widgets[ray]' (or 'ray[data]')"
ADDRESS = re.compile(r"^(ray://.+|auto|[\w.-]+:\d+)$")
AGENT_WAIT_MS = 180_000


def check_engine(engine) -> str | None:
    """``engine`` as the Ray address to run on (``""``: the Ray already started, or a new local one), or None
    for the local pass."""
    if engine is None or engine == "local":
        return None
    if not isinstance(engine, str):
        raise TypeError(f"engine: expected None, 'local', 'ray' or a Ray address, got {type(engine).__name__}")
    if engine == "ray":
        return ""
    if ADDRESS.match(engine):
        return engine
    raise ValueError(f"engine: expected None, 'local', 'ray' or a Ray address ('ray://head:10001', 'auto', 'head:6379'), got {engine!r}")


def import_ray():
    """The ``ray`` module with Ray Data, or an ImportError saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate part of Ray
    except ImportError as error:
        raise ImportError(f"engine: the Ray engine needs Ray Data, which is not installed here ({error}); {INSTALL_HINT}") from None
    return ray


class PassActor:
    """One worker of the job: the model, taken once from the object store, and what makes its inputs."""

    def __init__(self, model, preprocess, output, layer, device, threads: int):
        import ray

        model = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        torch.set_num_threads(threads)
        self.device = torch.device(device) if device is not None else model_device(model)
        self.model = model.to(self.device)
        self.preprocess, self.output, self.layer = preprocess, output, layer

    def _input(self, batch: dict, position: int) -> torch.Tensor:
        if "input" in batch:
            return torch.from_numpy(np.asarray(batch["input"][position], dtype=np.float32))[None]
        if "path" in batch:
            with Image.open(batch["path"][position]) as opened:
                picture = opened.convert("RGB")
        else:
            picture = Image.fromarray(np.asarray(batch["pixels"][position]))
        x = self.preprocess(picture)
        return x if x.ndim == 4 else x.unsqueeze(0)

    def __call__(self, batch: dict) -> dict:
        inputs = torch.cat([self._input(batch, position) for position in range(len(batch["index"]))])
        digests = input_digests(inputs)
        outputs, seen = _forward(self.model, _to_device(inputs, self.device), self.layer)
        return {
            "index": np.asarray(batch["index"], dtype=np.int64),
            "logits": logits_of(outputs, self.output).float().cpu().numpy(),
            "embedding": _pooled(seen, "avg", self.layer[1]).float().cpu().numpy(),
            "digest": digests,
        }


def _rows(session) -> list[dict]:
    """What each worker needs to make image ``index``'s input: its file, its pixels, or the input itself."""
    if session.given_inputs is not None:
        return [{"index": index, "input": x[0].numpy()} for index, x in enumerate(session.given_inputs)]
    paths = getattr(session.pictures, "paths", None)
    if paths is not None:
        return [{"index": index, "path": path} for index, path in enumerate(paths)]
    return [{"index": index, "pixels": np.asarray(session.pictures[index])} for index in range(session.count)]


def ray_pass(session, address: str, batch_size: int, top_k: int, checkpoint=None):
    """``(evaluation, embeddings)`` of every image of ``session``, as :meth:`DatasetPass.results` computes them,
    from a Ray Data job at ``address`` (see :func:`check_engine`)."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        # Ray's processes wait 30 s for each other by default; a busy two-core machine needs longer to start them.
        os.environ.setdefault("RAY_agent_register_timeout_ms", str(AGENT_WAIT_MS))
        ray.init(address=address or None, include_dashboard=False, logging_level="ERROR")
    context = ray.data.DataContext.get_current()
    # The pass draws its own progress bar: Ray Data's bars and its progress log (and its note that the bars are
    # off) would repeat it.
    kept = (context.execution_options.preserve_order, context.enable_progress_bars, logging.getLogger("ray.data").level)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context.enable_progress_bars = False
    try:
        with session.replicas.borrow(WORK) as replica:
            first = session.input(0).to(model_device(replica))
            layer = embedding_layer(called_layers(replica, first, session.output), replica)
            # Into the object store once: every actor takes the weights from there.
            model = ray.put(replica)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        actors = gpus or max(1, int(resources.get("CPU", 1)))
        context.execution_options.preserve_order = True
        dataset = ray.data.from_items(_rows(session)).map_batches(
            PassActor,
            fn_constructor_kwargs=dict(
                model=model, preprocess=session.preprocess, output=session.output, layer=layer,
                device="cuda" if gpus else None, threads=1,
            ),
            batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpus else 0, num_cpus=1,
            batch_format="numpy",
        )  # fmt: skip
        return _gathered(dataset.iter_batches(batch_size=None, batch_format="numpy"), session, top_k, checkpoint)
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = kept[:2]
        logging.getLogger("ray.data").setLevel(kept[2])
        if started_here:
            ray.shutdown()


def _gathered(batches, session, top_k: int, checkpoint):
    """The job's batches, in image order whatever order they come in, as one evaluation and its embeddings."""
    count = session.count
    labels = session.labels if session.labels is not None else np.zeros(count, dtype=np.int64)
    classified, embeddings = _Classified(top_k, digests=True), []
    waiting: dict[int, dict] = {}
    done = 0
    for batch in batches:
        waiting[int(batch["index"][0])] = batch
        while done in waiting:
            batch = waiting.pop(done)
            following = done + len(batch["index"])
            if not np.array_equal(batch["index"], np.arange(done, following)):
                raise RuntimeError(f"the Ray job returned images {batch['index'][:3]}... where {done} was due")
            # Ray hands out read-only views of its object store: the logits are copied into a tensor of their own.
            classified.add(torch.tensor(batch["logits"]), labels[done:following])
            classified.digests.append(np.asarray(batch["digest"], dtype=np.uint64))
            embeddings.append(batch["embedding"])
            done = following
            check(checkpoint, done / count)
    if done != count:
        raise RuntimeError(f"the Ray job returned {done} of the {count} images")
    return classified.evaluation(labels), np.concatenate(embeddings).astype(np.float32)
