"""ProjectorPanel: the points are the projected embeddings; selecting a point selects its image."""

import threading

import torch

import cnnviz_widgets as cw
from cnnviz_widgets.widgets import scatter_data
from tests.model_state import ModelState
from panel_support import digits, panel_of, pixels, settled  # noqa: F401 - digits is a fixture

# Enough points that a t-SNE fit takes many seconds: a Stop lands while it runs.
STOPPABLE_POINTS = 3000


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


class WatchedProjections:
    """Wraps a panel's projection process: an event when a t-SNE starts, and how each request ended."""

    def __init__(self, panel):
        self.started = threading.Event()
        self.outcomes = []
        self._project = panel._projector.project
        panel._projector.project = self.project

    def project(self, embeddings, method="pca", **kwargs):
        if method == "tsne":
            self.started.set()
        try:
            points = self._project(embeddings, method=method, **kwargs)
        except BaseException as error:
            self.outcomes.append((method, type(error).__name__))
            raise
        self.outcomes.append((method, "done"))
        return points


def test_tsne_runs_off_the_main_thread_and_can_be_superseded(digits):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.ProjectorPanel, digits, labels=labels))
    watched = WatchedProjections(panel)
    panel.method.value = "tsne"
    assert watched.started.wait(60), "the t-SNE started on the panel's worker"
    panel.method.value = "pca"
    settled(panel)
    assert watched.outcomes[0] == ("tsne", "Cancelled"), "the t-SNE was superseded, not finished"
    expected = cw.project(cw.embed(model, inputs_of(pictures), progress=False), "pca", dims=3)
    assert panel.scatter.points == scatter_data.positions(expected)[0]
    assert "PCA" in panel.summary.value


def test_stop_ends_a_running_tsne_and_the_panel_answers_the_next_request(digits):
    model = digits[0]
    x, y, names = cw.demo.digits("train")
    generator = torch.Generator().manual_seed(0)
    pick = torch.randint(len(x), (STOPPABLE_POINTS,), generator=generator)
    images = (x[pick] + 0.05 * torch.randn(STOPPABLE_POINTS, *x.shape[1:], generator=generator)).clamp(0, 1)
    panel = settled(cw.ProjectorPanel(model, images, class_names=names, labels=y[pick]))
    watched = WatchedProjections(panel)

    panel.method.value = "tsne"
    assert watched.started.wait(120), "the t-SNE started"
    panel.stop()
    assert panel.long_runner.wait(60), "the t-SNE kept running after Stop"
    assert watched.outcomes == [("tsne", "Cancelled")], "Stop ended the fit before it finished"
    assert not panel._projector.running, "the fitting process is gone"
    assert "PCA" in panel.summary.value, "a stopped projection shows nothing new"

    panel.dims.value = 2
    panel.method.value = "pca"
    settled(panel)
    expected = cw.project(cw.embed(model, images, progress=False), "pca", dims=2)
    assert panel.scatter.points == scatter_data.positions(expected)[0]
    assert "PCA" in panel.summary.value and "2D" in panel.summary.value and panel.error == ""
    panel.close()
    assert not panel._projector.running and not panel.threads_alive
