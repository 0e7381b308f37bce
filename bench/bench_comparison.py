"""Comparing two models: the speed and memory of ``cw.layer_similarity``.

Run with ``.venv/bin/python bench/bench_comparison.py [--images N] [--side 224] [--batch-size 64]``.
Two torchvision ResNet18s with random weights (seeds 0 and 1), on random images made batch by batch (the
images never sit in memory all at once). Prints a markdown table: the wall-clock time of the two models'
plain forward passes over the images, then of the CKA matrix between every conv layer of one and every
conv layer of the other (20 x 20), with the ratio; and the peak resident memory above the start of each
step, sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Self

import torch
import torchvision
from torch.utils.data import DataLoader, Dataset

import cnnviz_widgets as cw

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class RandomImages(Dataset):
    """``count`` images of ``side`` px, each drawn from its index, so every pass sees the same images."""

    def __init__(self, count: int, side: int):
        self.count, self.side = count, side

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(index)
        return torch.randn(3, self.side, self.side, generator=generator)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


class PeakMemory:
    """The peak resident memory during the block, above what the process held as it began."""

    def __enter__(self) -> Self:
        self.start = self.peak = resident_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def above_start_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def resnet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).eval()


def bench_layer_similarity(count: int = 1000, side: int = 224, batch_size: int = 64) -> None:
    model_a, model_b = resnet(0), resnet(1)
    loader = DataLoader(RandomImages(count, side), batch_size=batch_size)
    layers = len(cw.conv_layers(model_a))

    with PeakMemory() as forward_memory:
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in loader:
                model_a(batch)
                model_b(batch)
        forward_seconds = time.perf_counter() - start

    with PeakMemory() as cka_memory:
        start = time.perf_counter()
        table = cw.layer_similarity(model_a, model_b, loader)
        cka_seconds = time.perf_counter() - start

    print(
        f"{count:,} images of {side} px, batches of {batch_size}, torch threads: {torch.get_num_threads()}, "
        f"CPUs: {os.cpu_count()}\n"
    )
    print("| step | seconds | ratio | peak memory above start (MB) |\n| --- | ---: | ---: | ---: |")
    print(f"| two ResNet18s' plain forward passes | {forward_seconds:.1f} | 1.00 | {forward_memory.above_start_mb:.0f} |")
    print(
        f"| layer_similarity, {table.shape[0]} x {table.shape[1]} conv layers ({layers} a model) | {cka_seconds:.1f} "
        f"| {cka_seconds / forward_seconds:.2f} | {cka_memory.above_start_mb:.0f} |"
    )
    print(f"\nCKA of the first conv layers: {table.iloc[0, 0]:.3f}, of the last: {table.iloc[-1, -1]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    arguments = parser.parse_args()
    bench_layer_similarity(arguments.images, arguments.side, arguments.batch_size)


if __name__ == "__main__":
    main()
