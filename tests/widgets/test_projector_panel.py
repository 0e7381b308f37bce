"""ProjectorPanel: the points are the projected embeddings; selecting a point selects its image."""

import time

import torch

import cnnviz_widgets as cw
from cnnviz_widgets.widgets import scatter_data
from tests.model_state import ModelState
from panel_support import digits, panel_of, pixels, settled  # noqa: F401 - digits is a fixture

# Enough points that a t-SNE fit takes several times longer than the stop budget below.
STOPPABLE_POINTS = 3000
FIT_RUNS_SECONDS = 3.0
STOP_BUDGET_SECONDS = 2.0


def inputs_of(pictures):
    return torch.cat([cw.demo.digits_preprocess(picture) for picture in pictures])


def test_points_are_the_projected_embeddings_and_a_point_selects_its_image(digits):
    model, pictures, labels, names = digits
    state = ModelState(model)
    panel = settled(panel_of(cw.ProjectorPanel, digits, labels=labels))
    expected = cw.project(cw.embed(model, inputs_of(pictures), progress=False), "pca", dims=3)
    assert panel.scatter.points == scatter_data.positions(expected)[0]
    assert panel.scatter.color_by == "label"

    panel.scatter.selected = [12]
    assert panel.image == 12

    panel.layer_chooser.value = "features.conv2"
    panel.dims.value = 2
    settled(panel)
    expected = cw.project(cw.embed(model, inputs_of(pictures), layer="features.conv2", progress=False), "pca", dims=2)
    assert panel.scatter.points == scatter_data.positions(expected)[0]
    assert panel.scatter.view == "2d"
    assert "features.conv2" in panel.summary.value and "2D" in panel.summary.value
    state.assert_unchanged()


def test_save_as_png_draws_the_points_in_their_colours(digits, tmp_path):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.ProjectorPanel, digits, labels=labels))
    saved = pixels(panel.save(tmp_path / "points.png").read_bytes())
    palette = {tuple(int(code[i : i + 2], 16) for i in (1, 3, 5)) for code in panel.scatter.palette}
    colours = {tuple(colour) for colour in saved.reshape(-1, 3)}
    assert len(palette & colours) == len(set(labels.tolist())), "every class colour appears"


def test_tsne_runs_off_the_main_thread_and_can_be_superseded(digits):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.ProjectorPanel, digits, labels=labels))
    panel.method.value = "tsne"
    panel.method.value = "pca"
    settled(panel)
    expected = cw.project(cw.embed(model, inputs_of(pictures), progress=False), "pca", dims=3)
    assert panel.scatter.points == scatter_data.positions(expected)[0]
    assert "PCA" in panel.summary.value



def test_stop_ends_a_running_tsne_at_once_and_the_panel_answers_the_next_request(digits):
    model = digits[0]
    x, y, names = cw.demo.digits("train")
    generator = torch.Generator().manual_seed(0)
    pick = torch.randint(len(x), (STOPPABLE_POINTS,), generator=generator)
    images = (x[pick] + 0.05 * torch.randn(STOPPABLE_POINTS, *x.shape[1:], generator=generator)).clamp(0, 1)
    panel = settled(cw.ProjectorPanel(model, images, class_names=names, labels=y[pick]))

    panel.method.value = "tsne"
    time.sleep(FIT_RUNS_SECONDS)
    assert panel.long_runner.busy and panel._projector.running, "the t-SNE should still be fitting"
    stop_pressed = time.perf_counter()
    panel.stop()
    assert panel.long_runner.wait(STOP_BUDGET_SECONDS), "the t-SNE kept running after Stop"
    assert time.perf_counter() - stop_pressed < STOP_BUDGET_SECONDS
    assert not panel._projector.running, "the fitting process is still alive"
    assert "PCA" in panel.summary.value, "a stopped projection shows nothing new"

    panel.dims.value = 2
    panel.method.value = "pca"
    settled(panel)
    expected = cw.project(cw.embed(model, images, progress=False), "pca", dims=2)
    assert panel.scatter.points == scatter_data.positions(expected)[0]
    assert "PCA" in panel.summary.value and "2D" in panel.summary.value and panel.error == ""
    assert not panel._projector.running, "the superseded t-SNE's process is still alive"
