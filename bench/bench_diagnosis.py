"""Diagnosis at test-set scale: the neighbour graph and the findings built on it.

Run with ``.venv/bin/python bench/bench_diagnosis.py``. Printed, as markdown tables:

- ``bench_neighbours``: the cosine neighbour graph (k = 10) of 50,000 x 1,280 clustered embeddings by each
  search :func:`neighbour_graph` offers for large sets (exact search on a PCA reduction, pynndescent): seconds,
  peak memory above the embeddings, and recall of the true 10 neighbours of 1,000 images; then the seconds and
  peak memory of ``near_duplicates``, ``outliers`` and ``weak_slices`` together on the default graph.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import numpy as np

from cnnviz_widgets.diagnosis.embedding import near_duplicates, neighbour_graph, outliers, weak_slices

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


def bench_neighbours() -> None:
    points = clustered_embeddings()
    queries = np.random.default_rng(1).choice(len(points), size=RECALL_QUERIES, replace=False)
    truth = true_neighbours(points, queries, NEIGHBOURS)
    print(f"\n### Neighbour graph, {COUNT:,} x {DIMENSIONS:,} clustered embeddings, k = {NEIGHBOURS}\n")
    print("| search | seconds | peak memory (MiB) | recall of the true 10 |")
    print("| --- | ---: | ---: | ---: |")
    for method in ("pca", "nndescent"):
        start = time.perf_counter()
        with peak_memory() as memory:
            graph = neighbour_graph(points, NEIGHBOURS, method=method)
        seconds = time.perf_counter() - start
        print(f"| {method} | {seconds:.1f} | {memory['mib']:.0f} | {recall(graph.indices[queries], truth):.3f} |")

    rng = np.random.default_rng(2)
    labels = rng.integers(100, size=COUNT)
    predictions = np.where(rng.random(COUNT) < 0.8, labels, rng.integers(100, size=COUNT))
    digests = rng.integers(2**63, size=COUNT).astype(np.uint64)
    start = time.perf_counter()
    with peak_memory() as memory:
        graph = neighbour_graph(points, NEIGHBOURS)
        graph_seconds = time.perf_counter() - start
        near_duplicates(graph, labels, digests)
        outliers(graph)
        weak_slices(points, labels, predictions)
    seconds = time.perf_counter() - start
    print(f"\nneighbour_graph ({graph.method}) + near_duplicates + outliers + weak_slices: {seconds:.1f} s "
          f"(the graph {graph_seconds:.1f} s), peak memory {memory['mib']:.0f} MiB above the embeddings")


def main() -> None:
    bench_neighbours()


if __name__ == "__main__":
    main()
