"""ProjectorPanel: the points are the projected embeddings; a t-SNE moves them as it forms and a Stop keeps the
layout reached; selecting a point selects its image and lists its nearest neighbours."""

import threading

import numpy as np
import pytest
import torch

import cnnviz_widgets as cw
from cnnviz_widgets.projection_process import TSNE_ITERATIONS
from cnnviz_widgets.sources import PictureSource
from cnnviz_widgets.sprites import HOVER_MAX_SIDE, HOVER_THUMBNAIL_SIZE, build_atlas
from cnnviz_widgets.widgets import scatter_data
from cnnviz_widgets.widgets.projector_panel import FRAME_SECONDS, NEIGHBOURS, WRONG_COLOR, _Frames
from tests.model_state import ModelState
from panel_support import digits, panel_of, pixels, settled  # noqa: F401 - digits is a fixture

# Enough points that a t-SNE fit takes many seconds: a Stop lands while it runs.
STOPPABLE_POINTS = 3000
HANG_GUARD_SECONDS = 120
# Distinct layouts to see on screen before a Stop: the first frame and two moves.
LAYOUTS_SEEN = 3


def inputs_of(pictures):
    return torch.cat([cw.demo.digits_preprocess(picture) for picture in pictures])


def test_points_are_the_projected_embeddings_and_a_point_selects_its_image(digits):
    model, pictures, labels, names = digits
    state = ModelState(model)
    panel = settled(panel_of(cw.ProjectorPanel, digits, labels=labels))
    expected = cw.project(cw.embed(model, inputs_of(pictures), progress=False), "pca", dims=3)
    assert_positions(panel.scatter.points, expected)
    assert panel.scatter.color_by == "label"

    panel.scatter.selected = [12]
    assert panel.image == 12

    panel.layer_chooser.value = "features.conv2"
    panel.dims.value = 2
    settled(panel)
    expected = cw.project(cw.embed(model, inputs_of(pictures), layer="features.conv2", progress=False), "pca", dims=2)
    assert_positions(panel.scatter.points, expected)
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


def assert_positions(points: bytes, expected) -> None:
    """The scatter shows ``expected`` (N, 2 or 3) points. Up to rounding: the panel's embeddings come from the
    pass over the images, on the fast copy (BatchNorm folded), and ``cw.embed`` reads the model itself."""
    ours = np.frombuffer(points, dtype=np.float32)
    theirs = np.frombuffer(scatter_data.positions(expected)[0], dtype=np.float32)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def stoppable_panel(model):
    """A panel on enough jittered digits that a t-SNE runs for many seconds, shown with its PCA."""
    x, y, names = cw.demo.digits("train")
    generator = torch.Generator().manual_seed(0)
    pick = torch.randint(len(x), (STOPPABLE_POINTS,), generator=generator)
    images = (x[pick] + 0.05 * torch.randn(STOPPABLE_POINTS, *x.shape[1:], generator=generator)).clamp(0, 1)
    return settled(cw.ProjectorPanel(model, images, class_names=names, labels=y[pick])), images


def cosine_neighbours(embeddings, index):
    """The NEIGHBOURS rows nearest to row ``index`` by cosine similarity, by brute force in float64."""
    unit = embeddings.astype(np.float64) / np.linalg.norm(embeddings.astype(np.float64), axis=1, keepdims=True)
    similarities = unit @ unit[index]
    similarities[index] = -np.inf
    order = np.argsort(-similarities, kind="stable")[:NEIGHBOURS]
    return order.tolist(), similarities[order]


class WatchedProjections:
    """Wraps a panel's projection process: an event when a t-SNE starts, the frames it gives the panel, and how
    each request ended."""

    def __init__(self, panel):
        self.started = threading.Event()
        self.outcomes = []
        self.frames = []
        self._project = panel._projector.project
        panel._projector.project = self.project

    def project(self, embeddings, method="pca", on_frame=None, **kwargs):
        if method == "tsne":
            self.started.set()

        def frame_received(points, iteration):
            self.frames.append((points, iteration))
            on_frame(points, iteration)

        try:
            points = self._project(embeddings, method=method, on_frame=frame_received, **kwargs)
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
    assert_positions(panel.scatter.points, expected)
    assert "PCA" in panel.summary.value


@pytest.mark.slow
def test_stop_ends_a_running_tsne_and_the_panel_answers_the_next_request(digits):
    model = digits[0]
    panel, images = stoppable_panel(model)
    watched = WatchedProjections(panel)

    panel.method.value = "tsne"
    assert watched.started.wait(HANG_GUARD_SECONDS), "the t-SNE started"
    panel.stop()
    assert panel.long_runner.wait(60), "the t-SNE kept running after Stop"
    assert watched.outcomes == [("tsne", "Cancelled")], "Stop ended the fit before it finished"
    assert not panel._projector.running, "the fitting process is gone"
    # The child needs seconds to start and find each point's neighbours: this Stop came before any layout.
    assert watched.frames == []
    assert "PCA" in panel.summary.value, "a t-SNE stopped before its first frame leaves the PCA on screen"

    panel.dims.value = 2
    panel.method.value = "pca"
    settled(panel)
    expected = cw.project(cw.embed(model, images, progress=False), "pca", dims=2)
    assert_positions(panel.scatter.points, expected)
    assert "PCA" in panel.summary.value and "2D" in panel.summary.value and panel.error == ""
    panel.close()
    assert not panel._projector.running and not panel.threads_alive


@pytest.mark.slow
def test_tsne_moves_the_points_as_it_forms_and_stop_keeps_the_last_layout(digits):
    model = digits[0]
    panel, images = stoppable_panel(model)
    watched = WatchedProjections(panel)
    scatter = panel.scatter
    layouts, fit_running = [], []
    moved = threading.Event()

    def points_changed(change):
        layouts.append(change["new"])
        fit_running.append(not watched.outcomes)
        if len(set(layouts)) >= LAYOUTS_SEEN:
            moved.set()

    scatter.observe(points_changed, "points")
    panel.method.value = "tsne"
    assert moved.wait(HANG_GUARD_SECONDS), "the points moved frame after frame"
    assert all(fit_running[:LAYOUTS_SEEN]), "the layouts came while the fit ran"
    assert "t-SNE, forming: iteration" in panel.summary.value

    panel.stop()
    assert panel.long_runner.wait(60), "the t-SNE kept running after Stop"
    assert watched.outcomes == [("tsne", "Cancelled")], "Stop ended the fit before it finished"
    assert not panel._projector.running
    last_points, last_iteration = watched.frames[-1]
    assert 0 < last_iteration < TSNE_ITERATIONS
    assert panel.scatter is scatter and scatter.points == scatter_data.positions(last_points)[0]
    assert f"t-SNE, stopped at iteration {last_iteration} of {TSNE_ITERATIONS}" in panel.summary.value
    assert panel.error == ""
    for layout in layouts:
        cube = np.frombuffer(layout, dtype=np.float32).reshape(-1, 3)
        extent = cube.max(axis=0) - cube.min(axis=0)
        assert np.isclose(extent.max(), 2.0), "every frame fills the same cube, whatever t-SNE's units"
    panel.close()


def test_frames_reach_the_browser_at_most_every_frame_seconds():
    now = [0.0]
    frames = _Frames(clock=lambda: now[0])
    layout = np.zeros((4, 2), dtype=np.float32)
    assert frames.due(layout, 3)
    now[0] = FRAME_SECONDS / 2
    assert not frames.due(layout + 1, 6) and frames.newest[1] == 6, "a frame too soon is kept, not shown"
    now[0] = FRAME_SECONDS
    assert frames.due(layout + 2, 9)


def test_the_nearest_images_by_cosine_similarity_follow_the_selection_and_a_click_selects_one(digits):
    model, pictures, labels, names = digits
    # Every other image carries a wrong label, so that the captions show predictions that differ.
    given = labels.numpy().copy()
    given[1::2] = (given[1::2] + 1) % len(names)
    panel = settled(panel_of(cw.ProjectorPanel, digits, labels=given))
    embeddings = cw.embed(model, inputs_of(pictures), progress=False)
    predictions = cw.evaluate(model, inputs_of(pictures), labels, progress=False).predictions

    panel.scatter.selected = [12]
    settled(panel)
    expected, similarities = cosine_neighbours(embeddings, 12)
    assert panel.image == 12 and panel.neighbours == expected
    for position, (index, similarity) in enumerate(zip(expected, similarities)):
        caption = panel.neighbour_captions[position].value
        assert f"{similarity:.3f}" in caption and names[given[index]] in caption
        assert (WRONG_COLOR in caption) == (predictions[index] != given[index])
        if predictions[index] != given[index]:
            assert names[predictions[index]] in caption
        assert panel.neighbour_cards[position].layout.display == "flex"
    assert "nearest to image" in panel.neighbour_title.value

    chosen = expected[3]
    panel.neighbour_slots[3].pointer = {"x": 0.5, "y": 0.5, "kind": "press", "serial": 1}
    assert panel.image == chosen and panel.scatter.selected == [chosen]
    settled(panel)
    assert panel.neighbours == cosine_neighbours(embeddings, chosen)[0]


def test_opening_the_projector_after_the_pass_reads_no_picture_for_the_hover_thumbnails(digits, monkeypatch):
    model, pictures, labels, names = digits
    dashboard = settled(
        cw.explore(model, pictures, labels=labels, class_names=names, preprocess=cw.demo.digits_preprocess, cache=False)
    )
    source = dashboard.session.pictures
    read = []
    read_picture = PictureSource.__getitem__

    def counted(self, index):
        if self is source:
            read.append(index)
        return read_picture(self, index)

    monkeypatch.setattr(PictureSource, "__getitem__", counted)
    dashboard.tabs.selected_index = list(dashboard.panels).index("Projector")
    projector = settled(dashboard.panels["Projector"])

    # Every hover thumbnail was tiled while the pass read the pictures: the only pictures read now are the
    # nearest neighbours' shown under the scatter, at a larger size.
    assert 0 < len(projector.neighbours) <= NEIGHBOURS
    assert sorted(set(read)) == sorted(projector.neighbours)
    expected = build_atlas(pictures, thumbnail_size=HOVER_THUMBNAIL_SIZE, max_side=HOVER_MAX_SIDE)
    assert (projector.scatter.sprite_size, projector.scatter.sprite_columns) == (expected.thumbnail_size, expected.columns)
    np.testing.assert_array_equal(pixels(projector.scatter.sprite), np.asarray(expected.image))
    dashboard.close()


# A share of ten neighbours per image, as ModelDiff.embedding_agreement gives it, and the bin each falls in:
# five equal bins over [0, 1], a share on an edge in the bin above.
SHARES = np.arange(11) / 10
SHARE_BINS = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
AGREEMENT = "neighbours shared with the reference model"


def test_scores_given_before_the_first_projection_colour_the_scatter_made_then(digits, tmp_path):
    model, pictures, labels, names = digits
    panel = panel_of(cw.ProjectorPanel, digits, labels=labels, active=False)
    assert panel.scatter is None, "a hidden panel projects nothing until shown"
    shared = np.arange(len(pictures)) % 11
    panel.set_scores(SHARES[shared], AGREEMENT)
    panel.colour_points("score")
    panel.set_active(True)
    settled(panel)

    scatter = panel.scatter
    assert scatter.color_by == "score" and scatter.score_name == AGREEMENT
    assert list(scatter.colors) == [SHARE_BINS[k] for k in shared]
    assert scatter.legend == ["0–20%", "20–40%", "40–60%", "60–80%", "80–100%"]
    assert f"coloured by {AGREEMENT}" in panel.summary.value

    saved = pixels(panel.save(tmp_path / "points.png").read_bytes())
    colours = {tuple(colour) for colour in saved.reshape(-1, 3)}
    assert colours_of(scatter_data.SCORE_PALETTE) <= colours, "every bin's colour appears in the saved picture"
    class_colours = colours_of(scatter_data.categorical_palette(len(names))) - colours_of(scatter_data.SCORE_PALETTE)
    assert not class_colours & colours, "no point keeps its class colour"

    panel.set_scores(None)
    assert scatter.color_by == "label" and scatter.scores == b""
    assert list(scatter.colors) == labels.tolist() and "coloured by" not in panel.summary.value
    with pytest.raises(ValueError, match="^kind: 'score' needs scores"):
        panel.colour_points("score")
    panel.close()


def test_scores_reach_the_scatter_on_screen_and_the_summary_follows_its_colouring(digits):
    model, pictures, labels, names = digits
    panel = settled(panel_of(cw.ProjectorPanel, digits, labels=labels))
    scores = np.linspace(0, 1, len(pictures))
    panel.set_scores(scores, "")
    np.testing.assert_array_equal(np.frombuffer(panel.scatter.scores, np.float32), np.float32(scores))
    assert panel.scatter.color_by == "label" and "coloured by" not in panel.summary.value

    panel.scatter.color_by = "score"  # as the scatter's colour menu does
    assert "coloured by score" in panel.summary.value
    expected_bins = np.minimum(np.floor(scores * 5), 4)  # no score of k / 39 lies on an edge but 0 and 1
    np.testing.assert_array_equal(np.frombuffer(panel.scatter.colors, np.uint8), expected_bins)

    panel.colour_points("correct")
    assert panel.scatter.color_by == "correct" and "coloured by" not in panel.summary.value
    panel.close()


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda panel: panel.set_scores(np.full(3, 0.5), AGREEMENT), ValueError, r"^scores: expected 40 scores"),
        (lambda panel: panel.set_scores(np.full(40, np.nan), AGREEMENT), ValueError, r"^scores: .*nan at point 0"),
        (lambda panel: panel.set_scores(np.full(40, 1.2), AGREEMENT), ValueError, r"^scores: .*1.2 at point 0"),
        (lambda panel: panel.set_scores(np.full(40, 0.5), name=7), TypeError, r"^name: "),
        (lambda panel: panel.colour_points("score"), ValueError, r"^kind: 'score' needs scores"),
        (lambda panel: panel.colour_points("rainbow"), ValueError, r"^kind: expected one of"),
    ],
)
def test_bad_scores_and_colourings_name_the_argument(digits, call, error, message):
    panel = panel_of(cw.ProjectorPanel, digits, labels=digits[2], active=False)
    with pytest.raises(error, match=message):
        call(panel)
    assert panel._scores is None and panel._colour_by is None, "a refused call keeps nothing"
    panel.close()


def test_without_labels_colouring_by_label_is_refused(digits):
    panel = panel_of(cw.ProjectorPanel, digits, active=False)
    with pytest.raises(ValueError, match=r"^kind: 'correct' needs the images' labels"):
        panel.colour_points("correct")
    panel.close()


def colours_of(palette) -> set[tuple[int, int, int]]:
    return {tuple(int(code[i : i + 2], 16) for i in (1, 3, 5)) for code in palette}
