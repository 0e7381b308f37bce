"""The pass over a folder of pictures, here and as a Ray Data job: ``cw.scan`` with ``engine=None`` and ``"ray"``.

Run with ``.venv/bin/python bench/bench_scan.py [--pictures N] [--batch-size 16]``. EfficientNet-Lite0 (the
embedded default) reads N JPEG files of 256 px (crops of scikit-image's photos, written once to a temporary
folder) through its ImageNet preprocessing. Prints a markdown table: the local pass's throughput, the Ray
job's on a local Ray of as many CPUs as the machine has (started before the clock runs), their ratio, and
the Ray job's fixed cost: the time a job of one batch takes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import cnnviz_widgets as cw
from cnnviz_widgets import ray_pass

SIDE = 256


def write_pictures(folder: Path, count: int) -> None:
    """``count`` crops of the photos, each drawn from its index, as JPEG files."""
    photos = [np.asarray(picture.convert("RGB")) for picture in cw.demo.photos().values()]
    rng = np.random.default_rng(0)
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(SIDE // 2, min(photo.shape[:2]) + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((SIDE, SIDE))
        crop.save(folder / f"{index:06d}.jpg", quality=90)


def timed_scan(model, folder, preprocess, batch_size: int, engine=None) -> tuple[float, object]:
    started = time.perf_counter()
    result = cw.scan(model, folder, preprocess, cache=False, engine=engine, batch_size=batch_size, checkpoint=lambda fraction: None)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pictures", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=16)
    arguments = parser.parse_args()
    import ray

    model, preprocess, _ = cw.demo.imagenet_model()
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root)
        write_pictures(folder, arguments.pictures)
        one_batch = folder / "one-batch"
        one_batch.mkdir()
        write_pictures(one_batch, arguments.batch_size)
        local_seconds, local = timed_scan(model, folder, preprocess, arguments.batch_size)
        os.environ.setdefault("RAY_agent_register_timeout_ms", str(ray_pass.AGENT_WAIT_MS))
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        start_seconds = time.perf_counter() - started
        try:
            job_seconds, _ = timed_scan(model, one_batch, preprocess, arguments.batch_size, engine="ray")
            ray_seconds, remote = timed_scan(model, folder, preprocess, arguments.batch_size, engine="ray")
        finally:
            ray.shutdown()
    same = bool((remote.evaluation.predictions == local.evaluation.predictions).all())
    gap = float(np.abs(remote.embeddings - local.embeddings).max())
    count = arguments.pictures
    print(f"| {count:,} pictures, EfficientNet-Lite0, batches of {arguments.batch_size} | seconds | pictures/s |")
    print("| --- | ---: | ---: |")
    print(f"| local pass | {local_seconds:.1f} | {count / local_seconds:.1f} |")
    print(f"| Ray Data job, {os.cpu_count()} actors | {ray_seconds:.1f} | {count / ray_seconds:.1f} |")
    print(f"| ratio Ray / local | | {local_seconds / ray_seconds:.2f}x |")
    print(f"| Ray's start (`ray.init`), once per kernel | {start_seconds:.1f} | |")
    print(f"| a job of one batch (actors started, model put, read back) | {job_seconds:.1f} | |")
    print(f"\nsame predictions: {same}; largest embedding difference: {gap:.2e}")


if __name__ == "__main__":
    main()
