"""The user's model is never touched: panels and the user's own calls on other threads, training meanwhile.

Panels compute on a private replica of the model. These tests run them the way a notebook does, with the
user busy in the kernel at the same time, and watch the user's object from another thread the whole while.
"""

from __future__ import annotations

import io
import random
import threading
import time

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import cnnviz_widgets as cw
from cnnviz_widgets import render
from tests.model_state import ModelState, hook_dicts, used_model

SHARED_SECONDS = 15
SIDE = 64


def to_input(picture) -> torch.Tensor:
    return torchvision.transforms.functional.to_tensor(picture).unsqueeze(0)


class Sampler(threading.Thread):
    """Looks at the user's model over and over; records every time it is not as the user left it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(daemon=True)
        self.model = model
        self.modes = {name: m.training for name, m in model.named_modules()}
        self.flags = {name: p.requires_grad for name, p in model.named_parameters()}
        self.grads = {name: p.grad for name, p in model.named_parameters()}
        self.hooks = hook_dicts(model)
        self.stop = threading.Event()
        self.looks = 0
        self.seen_wrong: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            if {name: m.training for name, m in self.model.named_modules()} != self.modes:
                self.seen_wrong.append("a module's train/eval mode")
            if {name: p.requires_grad for name, p in self.model.named_parameters()} != self.flags:
                self.seen_wrong.append("a requires_grad flag")
            if any(p.grad is not self.grads[name] for name, p in self.model.named_parameters()):
                self.seen_wrong.append("a .grad field")
            if hook_dicts(self.model) != self.hooks:
                self.seen_wrong.append("a hook")
            self.looks += 1


@pytest.mark.slow
def test_two_panels_and_the_users_calls_share_a_model_that_nobody_touches():
    torch.manual_seed(0)
    model = used_model(torchvision.models.resnet18(weights=None, num_classes=10))
    state = ModelState(model)
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)) for _ in range(4)]
    inputs = [to_input(picture) for picture in pictures]
    cases = [(image, target) for image in range(len(pictures)) for target in (0, 3, 7)]
    # The truth: each map computed alone, before anything else runs.
    expected = {
        (image, target): (
            cw.grad_cam(model, inputs[image], "layer4", target),
            cw.guided_backprop(model, inputs[image], target),
        )
        for image, target in cases
    }
    sampler = Sampler(model)
    sampler.start()
    grad_cam_panel = cw.GradCAMPanel(model, pictures, preprocess=to_input)
    guided_panel = cw.GuidedBackpropPanel(model, pictures, preprocess=to_input)
    user_stop = threading.Event()
    user_calls, user_mismatches = [0], []

    def user() -> None:
        chooser = random.Random(1)
        while not user_stop.is_set():
            image, target = chooser.choice(cases)
            cam = cw.grad_cam(model, inputs[image], "layer4", target)
            guided = cw.guided_backprop(model, inputs[image], target)
            want_cam, want_guided = expected[(image, target)]
            if not (torch.allclose(cam, want_cam, atol=1e-6) and torch.allclose(guided, want_guided, atol=1e-7)):
                user_mismatches.append((image, target))
            user_calls[0] += 1

    worker = threading.Thread(target=user, daemon=True)
    worker.start()
    chooser = random.Random(2)
    changes = 0
    deadline = time.monotonic() + SHARED_SECONDS
    # At least SHARED_SECONDS, and enough work on every side however busy the machine is.
    while time.monotonic() < deadline or changes < 12 or user_calls[0] < 12:
        image, target = chooser.choice(cases)
        for panel in (grad_cam_panel, guided_panel):
            panel.image = image
            panel.target = target
        changes += 1
        if changes % 5 == 0:
            assert grad_cam_panel.wait(60) and guided_panel.wait(60)
    user_stop.set()
    worker.join(60)
    assert grad_cam_panel.wait(60) and guided_panel.wait(60)
    # What the panels show for their last settings is the single-threaded map too.
    image, target = grad_cam_panel.image, grad_cam_panel.target
    assert torch.allclose(grad_cam_panel.session.grad_cam(image, "layer4", target), expected[(image, target)][0], atol=1e-6)
    assert torch.allclose(guided_panel.session.guided_backprop(image, target), expected[(image, target)][1], atol=1e-7)
    assert grad_cam_panel.error == "" and guided_panel.error == ""
    grad_cam_panel.close()
    guided_panel.close()
    sampler.stop.set()
    sampler.join(10)
    assert not grad_cam_panel.threads_alive and not guided_panel.threads_alive
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("cnnviz-panel")]
    assert user_calls[0] >= 12 and changes >= 12 and sampler.looks >= 100
    assert user_mismatches == []
    assert sampler.seen_wrong == []
    state.assert_unchanged()


def test_training_in_the_kernel_while_the_dashboard_works():
    x, y, names = cw.demo.digits("test")
    pictures = cw.demo.digit_pictures(x[:24])
    model = cw.demo.digits_model()
    dashboard = cw.explore(model, pictures, labels=y[:24], class_names=names, preprocess=cw.demo.digits_preprocess)
    grad_cam = dashboard.panels["Grad-CAM"]
    dashboard.tabs.selected_index = list(dashboard.panels).index("Grad-CAM")
    train_x, train_y, _ = cw.demo.digits("train")
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    modes_at_forward = []
    hook = model.register_forward_pre_hook(
        lambda module, args: modes_at_forward.append(all(m.training for m in module.modules()))
    )
    parameters = dict(model.named_parameters())
    steps_missing_gradients = []
    model.train()
    for step in range(40):
        batch = slice(16 * step, 16 * step + 16)
        optimiser.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
        loss.backward()
        missing = [name for name, p in parameters.items() if p.grad is None or not p.grad.abs().sum() > 0]
        if missing:
            steps_missing_gradients.append((step, missing))
        optimiser.step()
        # The user clicks around between steps: every click sends the panels work.
        dashboard.image = step % 24
    hook.remove()
    model.eval()
    assert steps_missing_gradients == []
    assert len(modes_at_forward) == 40 and all(modes_at_forward)
    # Once the weights hold still, the dashboard notices and recomputes its views with them.
    deadline = time.monotonic() + 60
    while grad_cam.note.layout.display != "block" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert grad_cam.note.layout.display == "block"
    assert dashboard.wait(60)
    image, layer, target = grad_cam.image, grad_cam.layer, grad_cam.target
    cam = cw.grad_cam(model, grad_cam.session.input(image), layer, target)
    shown = np.asarray(Image.open(io.BytesIO(grad_cam.left.value)).convert("RGB"))
    expected = render.overlay(grad_cam.session.view(image), cam, alpha=grad_cam.opacity.value, cmap=grad_cam.cmap.value)
    assert np.array_equal(shown, expected)
    dashboard.close()


class Scale(torch.nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


@pytest.mark.parametrize("change", ["structure", "setting"])
def test_a_replaced_layer_or_a_changed_setting_is_followed(change):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), Scale(2.0), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    x = torch.randn(1, 1, 8, 8)
    before = cw.feature_maps(model, x, "1")
    if change == "structure":
        model[1] = torch.nn.Identity()
    else:
        model[1].factor = -3.0
    after = cw.feature_maps(model, x, "1")
    with torch.no_grad():
        expected = model[1](model[0](x))[0]
    assert not torch.equal(before, after) and torch.allclose(after, expected)
