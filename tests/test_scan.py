"""scan: the pass on its own, kept where explore reads it; the device it runs on."""

import numpy as np
import pytest
import torch
from PIL import Image

import cnnviz_widgets as cw
from cnnviz_widgets import data
from cnnviz_widgets.checkpoint import Cancelled
from cnnviz_widgets.replica import borrow
from cnnviz_widgets.session import dataset_pass
from tests.model_state import ModelState

IMAGES = 60


def digit_folder(root):
    """The first test digits as PNG files in one subfolder per class, as a user's test set on disk."""
    x, y, names = cw.demo.digits("test")
    pictures = cw.demo.digit_pictures(x[:IMAGES])
    for index, (picture, label) in enumerate(zip(pictures, y[:IMAGES].tolist())):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(folder / f"{index:03d}.png")
    return root, names


def counting(monkeypatch):
    """Counts the passes over the images that run (each a forward pass of every image)."""
    calls = []
    original = dataset_pass.evaluate_and_embed

    def counted(*args, **kwargs):
        calls.append(kwargs.get("device"))
        return original(*args, **kwargs)

    monkeypatch.setattr(dataset_pass, "evaluate_and_embed", counted)
    return calls


def test_a_scan_kept_on_disk_opens_the_dashboard_with_no_pass_over_the_images(tmp_path, monkeypatch):
    folder, names = digit_folder(tmp_path / "digits")
    model = cw.demo.digits_model()
    state = ModelState(model)
    passes = counting(monkeypatch)
    scanned = cw.scan(model, folder, cw.demo.digits_preprocess, class_names=names, cache=tmp_path / "cache", checkpoint=lambda fraction: None)
    assert passes == [None] and scanned.kept and not scanned.from_cache and scanned.seconds > 0
    # The truth: the model itself on the pictures, read back from the files.
    files = sorted(folder.rglob("*.png"))
    inputs = torch.cat([cw.demo.digits_preprocess(Image.open(path)) for path in files])
    with torch.no_grad():
        expected = model(inputs).argmax(1).numpy()
    np.testing.assert_array_equal(scanned.evaluation.predictions, expected)
    assert scanned.embeddings.shape == (IMAGES, 64)
    dashboard = cw.explore(model, folder, class_names=names, preprocess=cw.demo.digits_preprocess, cache=tmp_path / "cache")
    try:
        mistakes = dashboard.panels["Mistakes"]
        assert dashboard.wait(120) and mistakes.error == ""
        assert passes == [None], "the dashboard ran a pass over the images although the scan kept one"
        np.testing.assert_array_equal(mistakes.evaluation.predictions, expected)
    finally:
        dashboard.close()
    again = cw.scan(model, folder, cw.demo.digits_preprocess, class_names=names, cache=tmp_path / "cache", checkpoint=lambda fraction: None)
    assert again.from_cache and again.seconds == 0 and passes == [None]
    state.assert_unchanged()


def test_a_stopped_scan_keeps_nothing(tmp_path):
    x, y, names = cw.demo.digits("test")
    model = cw.demo.digits_model()

    def stop_halfway(fraction):
        if fraction >= 0.5:
            raise Cancelled

    pictures = cw.demo.digit_pictures(x[:IMAGES])
    with pytest.raises(Cancelled):
        cw.scan(model, pictures, cw.demo.digits_preprocess, labels=y[:IMAGES], cache=tmp_path, batch_size=8, checkpoint=stop_halfway)
    assert not list(tmp_path.glob("pass-*.npz"))


def test_the_device_is_checked_and_one_this_machine_lacks_is_named():
    x, y, _ = cw.demo.digits("test")
    model = cw.demo.digits_model()
    pictures = cw.demo.digit_pictures(x[:8])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device: 'cuda' was asked for, but torch sees no CUDA device here"):
            cw.scan(model, pictures, cw.demo.digits_preprocess, labels=y[:8], device="cuda", cache=False)
    with pytest.raises(ValueError, match="^device: 'tpu' is not a device torch knows"):
        cw.scan(model, pictures, cw.demo.digits_preprocess, labels=y[:8], device="tpu", cache=False)
    with pytest.raises(TypeError, match="^device: expected a torch.device"):
        cw.scan(model, pictures, cw.demo.digits_preprocess, labels=y[:8], device=0.5, cache=False)
    with pytest.raises(ValueError, match="^batch_size: "):
        cw.scan(model, pictures, cw.demo.digits_preprocess, labels=y[:8], batch_size=0, cache=False)
    on_cpu = cw.scan(model, pictures, cw.demo.digits_preprocess, labels=y[:8], device="cpu", cache=False, checkpoint=lambda f: None)
    assert on_cpu.device == "cpu" and not on_cpu.kept


def test_the_accelerator_forward_equals_the_tuned_cpu_forward():
    """What the pass runs on a GPU (the replica as it is, channels_last), run here on the CPU: the same
    logits and embeddings as the CPU's fast copy, to float rounding."""
    torch.manual_seed(0)
    model = cw.demo.digits_model()
    x, _, _ = cw.demo.digits("test")
    batch = x[:16]
    with borrow(model) as replica:
        layer = ("input", "classifier")
        logits, embeddings = data._forward(replica, batch, layer)
        accelerated_logits, accelerated_embeddings = data._accelerated_forward(replica, batch, layer)
        whole, _ = data._accelerated_forward(replica, batch, None)
    torch.testing.assert_close(accelerated_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(accelerated_embeddings, embeddings, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole, logits, atol=1e-5, rtol=1e-5)
