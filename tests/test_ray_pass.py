"""The pass as a Ray Data job: the same results as the local pass, kept where the dashboard reads them."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

import cnnviz_widgets as cw
from cnnviz_widgets import ray_pass
from tests.model_state import ModelState
from tests.test_scan import counting

PICTURES = 1000


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of two CPUs, as a user starts one; the pass uses it as it is."""
    import ray

    os.environ.setdefault("RAY_agent_register_timeout_ms", str(ray_pass.AGENT_WAIT_MS))
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    except Exception:  # noqa: BLE001 - Ray's own start on a loaded two-core machine times out at times: once more
        ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def digit_files(root, count: int):
    """``count`` digits (the test split, then the training split) as PNG files in one subfolder per class."""
    test_x, test_y, names = cw.demo.digits("test")
    train_x, train_y, _ = cw.demo.digits("train")
    pictures = cw.demo.digit_pictures(test_x) + cw.demo.digit_pictures(train_x)
    labels = test_y.tolist() + train_y.tolist()
    for index in range(count):
        folder = root / names[labels[index]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pictures[index]).save(folder / f"{index:04d}.png")
    return root, names


@pytest.mark.slow
def test_a_ray_job_gives_the_local_pass_and_the_dashboard_opens_on_it_with_no_pass(local_ray, tmp_path, monkeypatch):
    folder, names = digit_files(tmp_path / "digits", PICTURES)
    model = cw.demo.digits_model()
    state = ModelState(model)
    local = cw.scan(model, folder, cw.demo.digits_preprocess, class_names=names, cache=False, checkpoint=lambda fraction: None)
    seen = []
    remote = cw.scan(
        model, folder, cw.demo.digits_preprocess, class_names=names, cache=tmp_path / "cache", engine="ray", batch_size=64,
        checkpoint=seen.append,
    )
    assert remote.device == "ray" and remote.kept and local_ray.is_initialized(), "a Ray the user started stays up"
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= PICTURES // 64
    np.testing.assert_array_equal(remote.evaluation.predictions, local.evaluation.predictions)
    np.testing.assert_array_equal(remote.evaluation.top_classes, local.evaluation.top_classes)
    np.testing.assert_allclose(remote.evaluation.top_probabilities, local.evaluation.top_probabilities, atol=1e-5)
    np.testing.assert_allclose(remote.evaluation.given_probabilities, local.evaluation.given_probabilities, atol=1e-5)
    np.testing.assert_allclose(remote.embeddings, local.embeddings, atol=1e-5)
    np.testing.assert_array_equal(remote.evaluation.input_digests, local.evaluation.input_digests)
    np.testing.assert_array_equal(remote.evaluation.confusion, local.evaluation.confusion)
    passes = counting(monkeypatch)
    dashboard = cw.explore(model, folder, class_names=names, preprocess=cw.demo.digits_preprocess, cache=tmp_path / "cache")
    try:
        mistakes = dashboard.panels["Mistakes"]
        assert dashboard.wait(120) and mistakes.error == ""
        assert passes == [], "the dashboard ran a pass over the images although the Ray job kept one"
        np.testing.assert_array_equal(mistakes.evaluation.predictions, local.evaluation.predictions)
    finally:
        dashboard.close()
    state.assert_unchanged()


def test_the_ray_engine_without_ray_says_what_to_install(monkeypatch):
    x, y, _ = cw.demo.digits("test")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"^engine: the Ray engine needs Ray Data, .* pip install 'cnnviz_widgets\[ray\]'"):
        cw.scan(cw.demo.digits_model(), cw.demo.digit_pictures(x[:8]), cw.demo.digits_preprocess, labels=y[:8], engine="ray", cache=False)


def test_the_engine_is_checked():
    x, y, _ = cw.demo.digits("test")
    arguments = (cw.demo.digits_model(), cw.demo.digit_pictures(x[:8]), cw.demo.digits_preprocess)
    with pytest.raises(ValueError, match=r"^engine: expected None, 'local', 'ray' or a Ray address .* got 'spark'"):
        cw.scan(*arguments, labels=y[:8], engine="spark", cache=False)
    with pytest.raises(TypeError, match="^engine: expected None"):
        cw.scan(*arguments, labels=y[:8], engine=2, cache=False)
    with pytest.raises(ValueError, match="^device: a Ray job places its actors itself"):
        cw.scan(*arguments, labels=y[:8], engine="ray", device="cpu", cache=False)
    assert [ray_pass.check_engine(engine) for engine in (None, "local", "ray", "ray://head:10001", "auto", "10.0.0.2:6379")] == [
        None, None, "", "ray://head:10001", "auto", "10.0.0.2:6379",
    ]  # fmt: skip
