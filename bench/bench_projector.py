"""The projector at test-set scale: PCA, a t-SNE watched as it forms, and nearest neighbours.

Run with ``.venv/bin/python bench/bench_projector.py [--sizes 10000,50000] [--dims 2,3] [--watch 30]``.
The points are random clustered embeddings like a CNN's penultimate layer: 1,280 non-negative dimensions,
20 clusters. Printed, as markdown tables:

- PCA to 3-D (``cw.project``, in the caller's process): wall-clock and CPU seconds of each of three runs;
- t-SNE through :class:`ProjectionProcess`, the panel's path: seconds from the call to the first frame (the
  child is already started; the time goes into sending the embeddings, reducing them to 50 principal
  components and finding each point's neighbours), then the frames received during ``--watch`` seconds
  after it, their rate, and the iteration reached. A fit still running then is stopped, as the Stop button
  does, and the table says so;
- ``neighbours.nearest`` (k = 12) at the largest size, and ``Scatter3D.set_points``, which each frame shown
  costs the kernel.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import cnnviz_widgets as cw
from cnnviz_widgets.neighbours import nearest
from cnnviz_widgets.projection_process import TSNE_ITERATIONS, ProjectionProcess

DIMENSIONS = 1280
CLUSTERS = 20
PCA_RUNS = 3
NEIGHBOUR_RUNS = 5


class Watched(Exception):
    """Ends a fit once the watch is over."""


def clustered(count: int, seed: int = 0) -> np.ndarray:
    """``count`` float32 points in ``CLUSTERS`` clusters, rectified as the output of a ReLU and a pooling."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(CLUSTERS, DIMENSIONS)).astype(np.float32)
    points = centres[rng.integers(CLUSTERS, size=count)]
    points += rng.normal(size=points.shape).astype(np.float32)
    return np.maximum(points, 0, out=points)


def timed_pca(points: np.ndarray) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    cw.project(points, "pca", dims=3)
    return time.perf_counter() - wall, time.process_time() - cpu


def watch_tsne(projector: ProjectionProcess, points: np.ndarray, dims: int, watch: float) -> dict:
    """Fit a t-SNE, recording when each frame comes; stop it ``watch`` seconds after the first frame."""
    arrivals, iterations = [], []
    start = time.perf_counter()

    def on_frame(layout, iteration):
        arrivals.append(time.perf_counter() - start)
        iterations.append(iteration)

    def checkpoint(fraction):
        if arrivals and time.perf_counter() - start > arrivals[0] + watch:
            raise Watched

    try:
        projector.project(points, "tsne", dims=dims, checkpoint=checkpoint, on_frame=on_frame)
        finished = time.perf_counter() - start
    except Watched:
        finished = None
    watched = (finished or time.perf_counter() - start) - arrivals[0] if arrivals else 0.0
    return {
        "first": arrivals[0] if arrivals else float("nan"),
        "frames": len(arrivals),
        "rate": (len(arrivals) - 1) / watched if watched > 0 else float("nan"),
        "iteration": iterations[-1] if iterations else 0,
        "finished": finished,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000", help="comma-separated numbers of points")
    parser.add_argument("--dims", default="2,3", help="t-SNE dimensions to watch, comma-separated")
    parser.add_argument("--watch", type=float, default=30.0, help="seconds of frames to watch after the first")
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    dims = [int(value) for value in arguments.dims.split(",")]

    print(f"CPUs: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}\n")
    data = {size: clustered(size) for size in sizes}

    print(f"| PCA to 3-D, {DIMENSIONS} dimensions | runs: wall s (CPU s) | best wall s |\n| --- | --- | ---: |")
    for size in sizes:
        runs = [timed_pca(data[size]) for _ in range(PCA_RUNS)]
        listed = ", ".join(f"{wall:.2f} ({cpu:.2f})" for wall, cpu in runs)
        print(f"| {size:,} points | {listed} | {min(wall for wall, _ in runs):.2f} |")

    projector = ProjectionProcess()
    try:
        started = time.perf_counter()
        projector.project(data[sizes[0]][:200], "tsne", dims=2)
        print(f"\nchild process start and a 200-point t-SNE: {time.perf_counter() - started:.1f} s\n")
        print(
            "| t-SNE | first frame after, s | frames | frames/s | iteration reached | fit |\n"
            "| --- | ---: | ---: | ---: | ---: | --- |"
        )
        for size in sizes:
            for dimensions in dims:
                seen = watch_tsne(projector, data[size], dimensions, arguments.watch)
                fit = (
                    f"finished in {seen['finished']:.1f} s"
                    if seen["finished"] is not None
                    else f"stopped {arguments.watch:.0f} s after the first frame"
                )
                print(
                    f"| {size:,} points, {dimensions}-D | {seen['first']:.1f} | {seen['frames']} | "
                    f"{seen['rate']:.2f} | {seen['iteration']} of {TSNE_ITERATIONS} | {fit} |",
                    flush=True,
                )
    finally:
        projector.close()

    largest = data[max(sizes)]
    seconds = []
    for index in np.linspace(0, len(largest) - 1, NEIGHBOUR_RUNS).astype(int):
        start = time.perf_counter()
        nearest(largest, int(index))
        seconds.append(time.perf_counter() - start)
    scatter = cw.Scatter3D(cw.project(largest, "pca", dims=3))
    layout = np.random.default_rng(0).normal(size=(len(largest), 3)).astype(np.float32)
    start = time.perf_counter()
    scatter.set_points(layout)
    set_points = time.perf_counter() - start
    print(f"\n| at {len(largest):,} points | seconds |\n| --- | ---: |")
    print(f"| nearest 12 by cosine ({DIMENSIONS}-d), best of {NEIGHBOUR_RUNS} | {min(seconds):.3f} |")
    print(f"| nearest 12 by cosine, median of {NEIGHBOUR_RUNS} | {float(np.median(seconds)):.3f} |")
    print(f"| Scatter3D.set_points (one frame shown) | {set_points:.3f} |")


if __name__ == "__main__":
    main()
