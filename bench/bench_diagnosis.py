"""Diagnosis at test-set scale: the neighbour graph and the findings built on it.

Run with ``.venv/bin/python bench/bench_diagnosis.py``. Printed, as markdown tables:

- ``bench_neighbours``: the cosine neighbour graph (k = 10) of 50,000 x 1,280 clustered embeddings by each
  search :func:`neighbour_graph` offers for large sets (exact search on a PCA reduction, pynndescent): seconds,
  peak memory above the embeddings, and recall of the true 10 neighbours of 1,000 images; then the seconds and
  peak memory of ``near_duplicates``, ``outliers`` and ``weak_slices`` together on the default graph.
- ``bench_label_issues``: :func:`label_issues` on 50,000 images of 1,000 classes with 5% of their labels
  flipped, every probability kept, against ``cleanlab.filter.find_label_issues`` (its defaults) on the same
  probabilities in the same run, best of a few runs each, and the agreement of the two; then the top-10 path
  (``probabilities`` None, as the pass keeps it) on the same images, with each one's F1 on the flips.
- ``bench_heatmap_clusters``: :func:`heatmap_clusters` of a class of 1,000 pictures (crops of the demo photos)
  on EfficientNet-Lite0 at ``_conv_head``, against 1,000 separate ``grad_cam`` calls on the same pictures and
  against its batched maps alone (:func:`~cnnviz_widgets.heatmap_clusters.activation_maps`), in the same run,
  each with the pictures' preprocessing.
- ``bench_diagnose``: the whole diagnosis after the pass (:func:`~cnnviz_widgets.diagnosis.diagnosis_of`: label
  issues from the top 10 of 1,000 classes, the neighbour graph, near duplicates, outliers, weak slices, hardness
  and mistakenness) of 50,000 images with 1,280-dimensional embeddings, as the pass keeps them: seconds and peak
  memory above the pass's results. The budget: 60 s and 500 MB.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import warnings
from contextlib import contextmanager

import numpy as np

from cnnviz_widgets.data import Evaluation
from cnnviz_widgets.diagnosis.embedding import near_duplicates, neighbour_graph, outliers, weak_slices
from cnnviz_widgets.diagnosis.labels import label_issues

COUNT = 50_000
DIMENSIONS = 1280
NEIGHBOURS = 10
RECALL_QUERIES = 1000


def rss_mib() -> float:
    with open("/proc/self/statm") as stream:
        pages = int(stream.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextmanager
def peak_memory():
    """Yields a dict whose ``"mib"`` is, after the block, the peak resident memory above its start, in MiB."""
    result = {"mib": 0.0}
    start = rss_mib()
    done = threading.Event()

    def watch():
        while not done.wait(0.005):
            result["mib"] = max(result["mib"], rss_mib() - start)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield result
    finally:
        done.set()
        watcher.join()
        result["mib"] = max(result["mib"], rss_mib() - start)


def clustered_embeddings(count: int = COUNT, seed: int = 0) -> np.ndarray:
    """``count`` float32 points like a CNN's pooled features: 100 classes, each spread along a shared
    64-dimensional subspace of decaying variance, plus isotropic noise, rectified as by a ReLU.

    Points drawn around a centre by isotropic noise alone would have no true neighbours to find (every point of
    a cluster is then about as far from all the others); real embeddings vary along a few directions.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(100, DIMENSIONS)).astype(np.float32)
    scales = (1.5 / np.sqrt(np.arange(1, 65))).astype(np.float32)
    basis = rng.normal(size=(64, DIMENSIONS)).astype(np.float32) * scales[:, None]
    points = centres[rng.integers(len(centres), size=count)]
    points += rng.normal(size=(count, 64)).astype(np.float32) @ basis
    points += rng.normal(scale=0.3, size=points.shape).astype(np.float32)
    return np.maximum(points, 0, out=points)


def true_neighbours(points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    similarities = unit[queries] @ unit.T
    similarities[np.arange(len(queries)), queries] = -np.inf
    return np.argsort(-similarities, axis=1)[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(found, truth)]))


def nndescent_graph(points: np.ndarray, k: int) -> np.ndarray:
    """pynndescent's cosine graph, each image's ``k`` neighbours without itself."""
    from pynndescent import NNDescent

    found, _ = NNDescent(points, metric="cosine", n_neighbors=k + 1, random_state=0, compressed=True).neighbor_graph
    # An exact duplicate can take the image's own place in its row: drop the image wherever it is, else the last.
    is_self = found == np.arange(len(found))[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return found[~is_self].reshape(len(found), k)


def bench_neighbours() -> None:
    points = clustered_embeddings()
    queries = np.random.default_rng(1).choice(len(points), size=RECALL_QUERIES, replace=False)
    truth = true_neighbours(points, queries, NEIGHBOURS)
    print(f"\n### Neighbour graph, {COUNT:,} x {DIMENSIONS:,} clustered embeddings, k = {NEIGHBOURS}\n")
    print("| search | seconds (CPU seconds) | peak memory (MiB) | recall of the true 10 |")
    print("| --- | ---: | ---: | ---: |")
    searches = {
        "exact on a 128-component PCA, candidates ranked again": lambda: neighbour_graph(points, NEIGHBOURS).indices,
        "pynndescent": lambda: nndescent_graph(points, NEIGHBOURS),
    }
    for name, search in searches.items():
        start, cpu = time.perf_counter(), time.process_time()
        with peak_memory() as memory:
            indices = search()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"| {name} | {seconds:.1f} ({cpu:.1f} CPU) | {memory['mib']:.0f} | {recall(indices[queries], truth):.3f} |")

    rng = np.random.default_rng(2)
    labels = rng.integers(100, size=COUNT)
    predictions = np.where(rng.random(COUNT) < 0.8, labels, rng.integers(100, size=COUNT))
    digests = rng.integers(2**63, size=COUNT).astype(np.uint64)
    start, cpu = time.perf_counter(), time.process_time()
    with peak_memory() as memory:
        graph = neighbour_graph(points, NEIGHBOURS)
        graph_seconds = time.perf_counter() - start
        near_duplicates(graph, labels, digests)
        outliers(graph)
        weak_slices(points, labels, predictions)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"\nneighbour_graph ({graph.method}) + near_duplicates + outliers + weak_slices: {seconds:.1f} s, "
          f"{cpu:.1f} s CPU (the graph {graph_seconds:.1f} s), peak memory {memory['mib']:.0f} MiB above the embeddings")


LABEL_CLASSES = 1000
TOP_CLASSES = 10
FLIPPED_FRACTION = 0.05


def gaussian_probabilities(count: int, num_classes: int, seed: int = 0):
    """Softmax outputs of the Bayes classifier of one isotropic Gaussian per class in 64 dimensions (about 94%
    right), with 5% of the labels flipped -> (float32 probabilities, given labels, flipped mask)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, 64)).astype(np.float32)
    true = rng.integers(num_classes, size=count)
    spread = np.float32(1.3)
    features = means[true] + spread * rng.normal(size=(count, 64)).astype(np.float32)
    logits = (features @ means.T - 0.5 * (means**2).sum(axis=1)) / spread**2
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits, out=logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    flipped = rng.random(count) < FLIPPED_FRACTION
    given = true.copy()
    given[flipped] = (true[flipped] + rng.integers(1, num_classes, flipped.sum())) % num_classes
    return probabilities, given, flipped


def label_evaluation(probabilities: np.ndarray, given: np.ndarray, keep_all: bool) -> Evaluation:
    """The evaluation a pass keeps: every probability, or the top 10 and the given label's probability."""
    rows = np.arange(len(given))
    top = np.argpartition(-probabilities, TOP_CLASSES, axis=1)[:, :TOP_CLASSES]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(probabilities, top, 1), axis=1), 1)
    predictions = top[:, 0].astype(np.int64)
    confusion = np.zeros((probabilities.shape[1],) * 2, dtype=np.int64)
    np.add.at(confusion, (given, predictions), 1)
    return Evaluation(
        labels=given,
        predictions=predictions,
        probabilities=probabilities if keep_all else None,
        confusion=confusion,
        top_classes=top.astype(np.int32),
        top_probabilities=np.take_along_axis(probabilities, top, 1),
        given_probabilities=probabilities[rows, given],
    )


def best_of(runs: int, function):
    """(the last result, the least seconds over ``runs`` calls)."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return result, min(seconds)


def f1_on(found: np.ndarray, flipped: np.ndarray) -> float:
    hits = np.count_nonzero(flipped[found])
    return 2 * hits / (len(found) + np.count_nonzero(flipped))


def bench_label_issues() -> None:
    from cleanlab.filter import find_label_issues

    probabilities, given, flipped = gaussian_probabilities(COUNT, LABEL_CLASSES)
    full = label_evaluation(probabilities, given, keep_all=True)
    top = label_evaluation(probabilities, given, keep_all=False)
    ours, ours_seconds = best_of(3, lambda: label_issues(full))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, their_seconds = best_of(2, lambda: np.flatnonzero(find_label_issues(given, probabilities)))
    from_top, top_seconds = best_of(3, lambda: label_issues(top))
    found, from_top_found = ours["index"].to_numpy(), from_top["index"].to_numpy()
    agreement = len(np.intersect1d(found, theirs)) / len(np.union1d(found, theirs))
    print(f"\n### Label issues, {COUNT:,} images x {LABEL_CLASSES:,} classes, "
          f"{np.count_nonzero(flipped):,} labels flipped\n")
    print("| | seconds (best) | flagged | F1 on the flips |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| label_issues, every probability | {ours_seconds:.2f} | {len(found):,} | {f1_on(found, flipped):.3f} |")
    print(f"| cleanlab find_label_issues | {their_seconds:.2f} | {len(theirs):,} | {f1_on(theirs, flipped):.3f} |")
    print(f"| label_issues, top {TOP_CLASSES} only | {top_seconds:.2f} | {len(from_top_found):,} | "
          f"{f1_on(from_top_found, flipped):.3f} |")
    print(f"\nours / cleanlab's time: {ours_seconds / their_seconds:.3f}; "
          f"Jaccard of the flagged sets: {agreement:.4f}")


SPRAY_IMAGES = 1000
SPRAY_LAYER = "_conv_head"
SPRAY_TARGET = 285  # Egyptian cat


def crops_of_photos(count: int, seed: int = 0) -> list:
    """``count`` pictures: random crops (40 to 100% of the short side) of the demo photos, some mirrored."""
    from PIL import Image, ImageOps

    import cnnviz_widgets as cw

    rng = np.random.default_rng(seed)
    photos = list(cw.demo.photos().values())
    pictures = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        side = int(min(photo.size) * rng.uniform(0.4, 1.0))
        left, top = rng.integers(photo.size[0] - side + 1), rng.integers(photo.size[1] - side + 1)
        picture = photo.crop((left, top, left + side, top + side)).resize((256, 256), Image.BILINEAR)
        pictures.append(ImageOps.mirror(picture) if rng.random() < 0.5 else picture)
    return pictures


def bench_heatmap_clusters() -> None:
    import importlib

    import torch

    import cnnviz_widgets as cw
    from cnnviz_widgets.methods.grad_cam import CAM_METHODS
    from cnnviz_widgets.replica import WORK, borrow

    spray = importlib.import_module("cnnviz_widgets.heatmap_clusters")
    model, preprocess, _ = cw.demo.imagenet_model()
    pictures = crops_of_photos(SPRAY_IMAGES)
    labels = np.full(SPRAY_IMAGES, SPRAY_TARGET)

    start = time.perf_counter()
    for picture in pictures:
        cw.grad_cam(model, preprocess(picture), SPRAY_LAYER, SPRAY_TARGET)
    separate = time.perf_counter() - start

    # The first call builds and tunes the cut at the layer on the model's WORK replica, as the Grad-CAMs above
    # did on its VIEWS replica; a second call (a new session: nothing cached) finds them built.
    clustered = []
    for _ in range(2):
        start = time.perf_counter()
        result = cw.heatmap_clusters(model, pictures, SPRAY_TARGET, labels, SPRAY_LAYER, preprocess=preprocess)
        clustered.append(time.perf_counter() - start)

    start = time.perf_counter()
    with borrow(model, WORK) as replica:
        for first in range(0, SPRAY_IMAGES, spray.BATCH_SIZE):
            inputs = torch.cat([preprocess(picture) for picture in pictures[first : first + spray.BATCH_SIZE]])
            spray.activation_maps(replica, inputs, SPRAY_LAYER, SPRAY_TARGET, CAM_METHODS["grad-cam"])
    batched = time.perf_counter() - start

    print(f"\n### heatmap_clusters, {SPRAY_IMAGES:,} pictures of one class, EfficientNet-Lite0 at {SPRAY_LAYER}, "
          f"{torch.get_num_threads()} threads\n")
    print("| | seconds | per image (ms) |")
    print("| --- | ---: | ---: |")
    for name, seconds in (
        (f"{SPRAY_IMAGES:,} separate grad_cam calls", separate),
        (f"heatmap_clusters, first call (k = {result.k} by the eigengap)", clustered[0]),
        ("heatmap_clusters, second call", clustered[1]),
        (f"its batched maps alone, {spray.BATCH_SIZE} per pass", batched),
    ):
        print(f"| {name} | {seconds:.1f} | {1000 * seconds / SPRAY_IMAGES:.0f} |")
    print(f"\nheatmap_clusters / separate Grad-CAMs: {clustered[0] / separate:.2f}; second call / its batched maps "
          f"alone: {clustered[1] / batched:.2f}")


def bench_diagnose() -> None:
    from cnnviz_widgets.diagnosis import diagnosis_of

    probabilities, given, _ = gaussian_probabilities(COUNT, LABEL_CLASSES)
    kept = label_evaluation(probabilities, given, keep_all=False)
    # What the pass adds to each softmax: its entropy (here from the probabilities, there from the logits).
    entropy = -(probabilities * np.log(np.maximum(probabilities, np.finfo(np.float32).tiny))).sum(axis=1)
    evaluation = dataclasses.replace(kept, entropy=entropy.astype(np.float32))
    del probabilities
    embeddings = clustered_embeddings()
    names = [f"class {k}" for k in range(LABEL_CLASSES)]
    sources = [str(index) for index in range(COUNT)]
    with peak_memory() as memory:
        start, cpu = time.perf_counter(), time.process_time()
        diagnosis = diagnosis_of(evaluation, embeddings, names, sources)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"\n### diagnose after the pass: {COUNT:,} images, {DIMENSIONS}-dimensional embeddings, top {TOP_CLASSES} of "
          f"{LABEL_CLASSES:,} classes\n")
    print("| seconds | CPU seconds | peak memory (MiB) | findings | suspects |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(f"| {seconds:.1f} | {cpu:.1f} | {memory['mib']:.0f} | {len(diagnosis.findings())} | {len(diagnosis.suspects())} |")
    print(f"\nbudget: 60 s and 500 MB; {seconds / 60:.2f} of the time and {memory['mib'] / 500:.2f} of the memory")


def main() -> None:
    bench_diagnose()
    bench_neighbours()
    bench_label_issues()
    bench_heatmap_clusters()


if __name__ == "__main__":
    main()
