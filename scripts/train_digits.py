"""Retrain the demo digits CNN (or its small vision transformer) and write its weights into the package.

    .venv/bin/python scripts/train_digits.py                     # 30 epochs -> weights/digits_cnn.pt
    .venv/bin/python scripts/train_digits.py --epochs 2          # -> weights/digits_cnn_2_epochs.pt
    .venv/bin/python scripts/train_digits.py --architecture vit  # 60 epochs -> weights/digits_vit.pt

One file per epoch count, named by ``cnnviz_widgets.demo.digits_weights_name``: ``digits_cnn.pt`` for the
final 30 epochs, ``digits_cnn_<N>_epochs.pt`` for any other N; ``demo.digits_model(epochs)`` reads it back.
The learning rate follows a cosine schedule over the whole run, so a shorter run is not a snapshot of the
longer one part way: it is its own run, annealed to the end.

Deterministic on the CPU: fixed seeds, one thread, the same split as ``cnnviz_widgets.demo.digits``; the same
epoch count gives the same weights bit for bit. ``train(epochs)`` runs the training from Python.
Prints the test accuracy; the shipped 30-epoch weights must keep it at 97% or more.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnviz_widgets import demo

BATCH_SIZE = 64
LEARNING_RATE = 3e-3
MAX_SHIFT = 0.12  # of the half-width: about two pixels on 32x32
MAX_ROTATION = 0.15  # radians
SEED = 0


ARCHITECTURES = {
    "cnn": (demo.DigitsCNN, 1, LEARNING_RATE),
    # Attention needs a gentler step than the CNN's BatchNorm-steadied convolutions.
    "vit": (demo.digits_vit_architecture, 3, 1e-3),
}
"""Each model the script trains: how to make it, the channels it reads (the ViT reads the digit three
times, as a grey RGB picture) and its learning rate."""


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small random rotations and shifts, so the filters learn strokes rather than positions."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * MAX_ROTATION
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * MAX_SHIFT
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train(
    epochs: int = demo.DIGITS_EPOCHS, log: Callable[[str], None] | None = None, architecture: str = "cnn"
) -> torch.nn.Module:
    """A digits model trained for ``epochs`` epochs on ``digits("train")``, in eval mode; ``log`` gets one line
    per epoch. architecture: ``"cnn"`` (:class:`~cnnviz_widgets.demo.DigitsCNN`) or ``"vit"`` (the small
    vision transformer of :func:`~cnnviz_widgets.demo.digits_vit`, reading the digit on three channels).

    Runs on one thread from a fixed seed, which determinism needs; the caller's thread count and global
    random state are given back afterwards.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive int, got {epochs!r}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture: expected one of {tuple(ARCHITECTURES)}, got {architecture!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            return _train(epochs, log, architecture)
    finally:
        torch.set_num_threads(threads)


def _train(epochs: int, log: Callable[[str], None] | None, architecture: str) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(SEED)
    make, channels, learning_rate = ARCHITECTURES[architecture]
    x_train, y_train, _ = demo.digits("train")
    x_test, y_test, _ = demo.digits("test")
    x_train, x_test = x_train.repeat(1, channels, 1, 1), x_test.repeat(1, channels, 1, 1)
    model = make()
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        losses = []
        # The last partial batch is dropped: BatchNorm statistics of a handful of images are noise.
        for start in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            loss = F.cross_entropy(model(augment(x_train[batch], generator)), y_train[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        schedule.step()
        if log is not None:
            mean_loss = sum(losses) / len(losses)
            log(f"epoch {epoch + 1:2d}  loss {mean_loss:.4f}  test accuracy {accuracy(model, x_test, y_test):.4f}")
    return model.eval()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs to train (default: 30 for the CNN, 60 for the ViT)")
    parser.add_argument("--architecture", choices=tuple(ARCHITECTURES), default="cnn", help="the CNN (default) or the small ViT")
    arguments = parser.parse_args(argv)
    if arguments.architecture == "vit":
        epochs = arguments.epochs or demo.DIGITS_VIT_EPOCHS
        name = demo.DIGITS_VIT_WEIGHTS
    else:
        epochs = arguments.epochs or demo.DIGITS_EPOCHS
        name = demo.digits_weights_name(epochs)
    model = train(epochs, log=print, architecture=arguments.architecture)
    target = Path(demo.__file__).parent / "weights" / name
    torch.save(model.state_dict(), target)
    print(f"wrote {target} ({target.stat().st_size / 1024:.0f} KiB)")
    return target


if __name__ == "__main__":
    main()
