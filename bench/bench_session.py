"""What it costs never to be stale: the weights' fingerprint, taken once per request and once a second by the
watcher, against the model's own forward pass; and the pass over a test set, asked for by two panels at once.

Run with ``make bench``, or ``.venv/bin/python bench/bench_session.py``. Prints two markdown tables:
- per model (EfficientNet-Lite0 pretrained, ResNet50 at random weights): its parameter count, the fingerprint
  with and without the CRC-32 of the values (ms, median of 20), one batched forward of a 224 px image on the
  replica (ms, median of 5), the fingerprint's share of a request that makes that forward pass, and of the
  watcher's one-second interval;
- the pass over 256 digit pictures, asked for by one panel and then by two at once: wall-clock time and the
  passes run (single-flight: one).
"""

from __future__ import annotations

import statistics
import threading
import time

import torch
import torchvision

import cnnviz_widgets as cw
from cnnviz_widgets import replica
from cnnviz_widgets.replica import WATCH_SECONDS, fingerprint
from cnnviz_widgets.session import Session, dataset_pass

REPEATS = 20
PASS_PICTURES = 256


def median_ms(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def fingerprint_table() -> None:
    imagenet, _, _ = cw.demo.imagenet_model()
    models = {"EfficientNet-Lite0": imagenet, "ResNet50": torchvision.models.resnet50().eval()}
    print("| model | parameters | fingerprint (ms) | without CRC-32 (ms) | forward (ms) | share of a request | share of the watcher's second |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    x = torch.randn(1, 3, 224, 224)
    original = replica.values_checksum
    for name, model in models.items():
        with_values = median_ms(lambda: fingerprint(model), REPEATS)
        replica.values_checksum = lambda tensor: 0
        try:
            without = median_ms(lambda: fingerprint(model), REPEATS)
        finally:
            replica.values_checksum = original
        with torch.no_grad(), replica.replicas_of(model).borrow() as copy:
            forward = median_ms(lambda: copy(x), 5)
        count = sum(parameter.numel() for parameter in model.parameters())
        print(
            f"| {name} | {count / 1e6:.1f} M | {with_values:.1f} | {without:.2f} | {forward:.1f} | "
            f"{with_values / (with_values + forward):.0%} | {with_values / (WATCH_SECONDS * 1000):.1%} |"
        )


def single_flight_table() -> None:
    x, y, names = cw.demo.digits("test")
    model = cw.demo.digits_model()
    pictures = cw.demo.digit_pictures(x[:PASS_PICTURES])
    passes = []
    run = dataset_pass.evaluate_and_embed

    def counted(*args, **kwargs):
        passes.append(1)
        return run(*args, **kwargs)

    dataset_pass.evaluate_and_embed = counted
    print()
    print("| askers | seconds | passes run |")
    print("| ---: | ---: | ---: |")
    try:
        for askers in (1, 2):
            passes.clear()
            session = Session(model, pictures, cw.demo.digits_preprocess, names, y[:PASS_PICTURES], cache=False)
            threads = [threading.Thread(target=session.evaluation) for _ in range(askers)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            print(f"| {askers} | {time.perf_counter() - start:.2f} | {len(passes)} |")
    finally:
        dataset_pass.evaluate_and_embed = run


def main() -> None:
    torch.manual_seed(0)
    fingerprint_table()
    single_flight_table()


if __name__ == "__main__":
    main()
