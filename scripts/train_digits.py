"""Retrain the demo digits CNN and write its weights into the package.

    .venv/bin/python scripts/train_digits.py

Deterministic on the CPU: fixed seeds, one thread, the same split as ``cnnviz_widgets.demo.digits``.
Prints the test accuracy; the shipped weights must keep it at 97% or more.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from cnnviz_widgets import demo

EPOCHS = 30
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
MAX_SHIFT = 0.12  # of the half-width: about two pixels on 32x32
MAX_ROTATION = 0.15  # radians
SEED = 0


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


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(SEED)
    x_train, y_train, _ = demo.digits("train")
    x_test, y_test, _ = demo.digits("test")
    model = demo.DigitsCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=EPOCHS)
    for epoch in range(EPOCHS):
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
        mean_loss = sum(losses) / len(losses)
        print(f"epoch {epoch + 1:2d}  loss {mean_loss:.4f}  test accuracy {accuracy(model, x_test, y_test):.4f}")
    target = Path(demo.__file__).parent / "weights" / demo.DIGITS_WEIGHTS
    torch.save(model.state_dict(), target)
    print(f"wrote {target} ({target.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
