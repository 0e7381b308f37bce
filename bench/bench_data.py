"""Projections and the 3D scatter at MNIST scale: 70,000 points.

Run with ``make bench``, or
``.venv/bin/python bench/bench_data.py [--points N] [--methods pca,umap,tsne] [--dims 3]``.
The points are real embeddings: scikit-learn's 1797 digit scans, each drawn many times with a random small
shift and rotation, through the demo digits CNN (64-d penultimate features). Prints markdown tables: the
wall-clock time of embed, evaluate and each projection (3-D unless --dims 2, seed 0; UMAP runs twice, as the
first call of a process also compiles numba code; t-SNE is openTSNE's, FFT-interpolated in 2-D and
Barnes-Hut in 3-D), then what Scatter3D sends per point.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from ipywidgets.widgets.widget import _remove_buffers

import cnnviz_widgets as cw

METHOD_NAMES = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}
MAX_SHIFT = 0.1
MAX_ROTATION = 0.2


def jittered_digits(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` digit images: the scans of both splits, repeated with random small rotations and shifts."""
    generator = torch.Generator().manual_seed(seed)
    train, train_labels, _ = cw.demo.digits("train")
    test, test_labels, _ = cw.demo.digits("test")
    scans, labels = torch.cat([train, test]), torch.cat([train_labels, test_labels])
    pick = torch.randint(len(scans), (count,), generator=generator)
    angle = (torch.rand(count, generator=generator) * 2 - 1) * MAX_ROTATION
    shift = (torch.rand(count, 2, generator=generator) * 2 - 1) * MAX_SHIFT
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    images = scans[pick]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False), labels[pick]


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def wire_bytes(widget) -> tuple[int, int]:
    """(binary buffer bytes, JSON bytes without the widget's code) of the state ipywidgets sends."""
    import json

    state, _, buffers = _remove_buffers(widget.get_state())
    json_part = {key: value for key, value in state.items() if key not in ("_esm", "_css")}
    return sum(len(buffer) for buffer in buffers), len(json.dumps(json_part))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=70_000)
    parser.add_argument("--methods", default="pca,umap,tsne", help="comma-separated projections to time")
    parser.add_argument("--dims", type=int, default=3, choices=(2, 3), help="dimensions of the projections")
    arguments = parser.parse_args()
    count = arguments.points

    print(f"{count:,} points, torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}, "
          f"load average: {os.getloadavg()[0]:.1f}\n")
    images, labels = jittered_digits(count)
    model = cw.demo.digits_model()
    embeddings, embed_seconds = timed(lambda: cw.embed(model, images, batch_size=512, progress=False))
    evaluation, evaluate_seconds = timed(lambda: cw.evaluate(model, images, labels, batch_size=512, progress=False))

    rows = [("embed (digits CNN, 64-d)", embed_seconds), ("evaluate", evaluate_seconds)]
    projections = {}
    methods = arguments.methods.split(",")
    if not set(methods) <= set(METHOD_NAMES):
        parser.error(f"--methods: choose among {', '.join(METHOD_NAMES)}")
    runs = [(f"project: {METHOD_NAMES[method]}", method) for method in methods]
    if "umap" in methods:
        runs.insert(methods.index("umap") + 1, ("project: UMAP (second call, numba code compiled)", "umap"))
    for label, method in runs:
        projections[method], seconds = timed(lambda: cw.project(embeddings, method, dims=arguments.dims, seed=0))
        rows.append((label, seconds))

    print("| step | seconds |\n| --- | ---: |")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} |")

    points = next(iter(projections.values()))
    scatter, build_seconds = timed(lambda: cw.Scatter3D(points, labels=labels, predictions=evaluation.predictions))
    binary, json_size = wire_bytes(scatter)
    with_images, atlas_seconds = timed(lambda: cw.Scatter3D(points, labels=labels,
                                                            predictions=evaluation.predictions,
                                                            images=cw.demo.digit_pictures(images)))
    binary_with_images, _ = wire_bytes(with_images)
    print("\n| Scatter3D state | value |\n| --- | ---: |")
    print(f"| binary bytes per point (positions, colours, labels, predictions) | {binary / count:.1f} |")
    print(f"| JSON part (without the JS bundle) | {json_size:,} bytes |")
    print(f"| build time | {build_seconds:.2f} s |")
    print(f"| with hover thumbnails: bytes per point | {binary_with_images / count:.1f} |")
    print(f"| with hover thumbnails: thumbnail side | {with_images.sprite_size} px |")
    print(f"| with hover thumbnails: build time (atlas PNG) | {atlas_seconds:.1f} s |")


if __name__ == "__main__":
    main()
