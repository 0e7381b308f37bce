"""A real test set from a folder: the dashboard's one pass against the model's best raw batched forward.

Run with ``make bench``, or ``.venv/bin/python bench/bench_test_set.py [--sizes 2000,10000]``.
For each size, a temporary folder of JPEGs at 256 px in ``ImageFolder`` layout (10 classes) is made from
random crops of scikit-image's bundled photos. EfficientNet-Lite0 reads them. Printed, as a markdown table:

- the raw forward: the best throughput of the model alone on ready tensors, over memory formats
  (contiguous, channels_last) and batch sizes, measured in the same run — the hardware's own limit;
- the pass: images per second of the dashboard's single pass (decoding, preprocessing, predictions and
  embeddings), and its ratio to the raw forward;
- the first tab: seconds from ``explore(...)`` until the Mistakes tab shows its first matrix and gallery,
  those of the images read so far (the pass runs on, filling them in);
- memory: the process's resident memory growth over the pass;
- Projector: seconds from choosing the Projector tab, once the pass is over, until its scatter is set (the
  points projected by PCA, the hover thumbnails in place);
- reopen: seconds for a second dashboard on the same model and folder to show the evaluation, read from the
  disk cache.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import cnnviz_widgets as cw

SIDE = 256
CLASSES = 10
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
BATCHES = (1, 8, 32, 64)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_folder(root: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs in ``CLASSES`` subfolders, random 256 px crops (rescaled) of the bundled photos."""
    rng = np.random.default_rng(seed)
    photos = [photo.convert("RGB") for photo in cw.demo.photos().values()]
    for label in range(CLASSES):
        (root / f"class{label}").mkdir(parents=True)
    for index in range(count):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(min(photo.size) // 3, min(photo.size)))
        left = int(rng.integers(0, photo.width - side + 1))
        top = int(rng.integers(0, photo.height - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((SIDE, SIDE), Image.BILINEAR)
        crop.save(root / f"class{index % CLASSES}" / f"{index:05d}.jpg", quality=90)


def raw_forward(model: torch.nn.Module, preprocess) -> tuple[float, str]:
    """The model's best images per second on ready inputs, and the setting that gave it."""
    x = preprocess(Image.new("RGB", (SIDE, SIDE), (120, 80, 40)))
    best, setting = 0.0, ""
    with torch.inference_mode():
        for name, memory_format in FORMATS.items():
            replica = copy.deepcopy(model).eval().to(memory_format=memory_format)
            for batch in BATCHES:
                inputs = x.expand(batch, -1, -1, -1).contiguous(memory_format=memory_format)
                replica(inputs)
                runs = max(2, 64 // batch)
                start = time.perf_counter()
                for _ in range(runs):
                    replica(inputs)
                rate = runs * batch / (time.perf_counter() - start)
                if rate > best:
                    best, setting = rate, f"{name}, batch {batch}"
    return best, setting


def bench(count: int, model, preprocess, class_names) -> dict:
    root = Path(tempfile.mkdtemp(prefix="cnnviz-bench-"))
    cache = root / "cache"
    try:
        make_folder(root / "pictures", count)
        raw, setting = raw_forward(model, preprocess)
        before = resident_bytes()
        start = time.perf_counter()
        dashboard = cw.explore(model, root / "pictures", preprocess=preprocess, cache=cache)
        mistakes = dashboard.panels["Mistakes"]
        first_view = [time.perf_counter()] if mistakes.summary.value else []
        mistakes.summary.observe(lambda change: first_view.append(time.perf_counter()), "value")
        assert mistakes.wait(24 * 3600)
        first_tab = first_view[0] - start
        passed = time.perf_counter() - start
        grown = resident_bytes() - before
        projector = dashboard.panels["Projector"]
        start = time.perf_counter()
        dashboard.tabs.selected_index = list(dashboard.panels).index("Projector")
        assert projector.long_runner.wait(600) and projector.scatter is not None
        projector_open = time.perf_counter() - start
        dashboard.close()
        start = time.perf_counter()
        again = cw.explore(model, root / "pictures", preprocess=preprocess, cache=cache)
        assert again.panels["Mistakes"].wait(600) and again.panels["Mistakes"].evaluation is not None
        reopen = time.perf_counter() - start
        again.close()
        return dict(
            count=count, raw=raw, setting=setting, rate=count / passed, first_tab=first_tab, grown=grown,
            projector=projector_open, reopen=reopen,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000", help="comma-separated folder sizes")
    arguments = parser.parse_args()
    model, preprocess, class_names = cw.demo.imagenet_model()
    rows = [bench(int(size), model, preprocess, class_names) for size in arguments.sizes.split(",")]
    print(
        "| images | raw forward (img/s) | best setting | pass (img/s) | pass / raw | first tab (s) | RSS growth (MiB) "
        "| Projector (s) | reopen (s) |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['count']:,} | {row['raw']:.1f} | {row['setting']} | {row['rate']:.1f} | {row['rate'] / row['raw']:.2f} "
            f"| {row['first_tab']:.2f} | {row['grown'] / 2**20:.0f} | {row['projector']:.2f} | {row['reopen']:.2f} |"
        )


if __name__ == "__main__":
    main()
