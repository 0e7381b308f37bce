"""Scatter3D's state: what crosses the wire, in which form and at what cost per point."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import traitlets
from ipywidgets.widgets.widget import _remove_buffers
from PIL import Image

import cnnviz_widgets as cw
from cnnviz_widgets.widgets import scatter3d, scatter_data

# The README's promise: positions 12 (float32 x, y, z), colour 1 (uint8), label 2 and prediction 2 (uint16).
BYTES_PER_POINT = {"points": 12, "colors": 1, "labels": 2, "predictions": 2}
# The module's JavaScript travels once per widget, whatever the number of points.
CODE_TRAITS = ("_esm", "_css")


def wire(widget) -> tuple[dict, list[list[str]], list]:
    """The widget's state split as ipywidgets sends it: JSON part, buffer paths, binary buffers."""
    return _remove_buffers(widget.get_state())


def classified_points(count: int, **more) -> cw.Scatter3D:
    """``count`` random points with labels and predictions among 10 classes (and ``more`` traits)."""
    rng = np.random.default_rng(0)
    return cw.Scatter3D(
        rng.normal(size=(count, 3)), labels=rng.integers(0, 10, count), predictions=rng.integers(0, 10, count), **more
    )


def test_seventy_thousand_points_cross_as_seventeen_bytes_each():
    count = 70_000
    widget = classified_points(count, class_names=[f"class {k}" for k in range(10)])
    state, paths, buffers = wire(widget)
    sizes = {path[0]: len(buffer) for path, buffer in zip(paths, buffers)}
    promised = {name: size * count for name, size in BYTES_PER_POINT.items()}
    assert {name: sizes.pop(name, None) for name in BYTES_PER_POINT} == promised
    assert not any(sizes.values()), f"without images, no other buffer carries bytes: {sizes}"
    assert sum(len(buffer) for buffer in buffers) == 17 * count
    json_part = {key: value for key, value in state.items() if key not in CODE_TRAITS}
    assert len(json.dumps(json_part)) < 2_000, "per-point data leaked into the JSON part of the state"


def test_scores_cross_as_four_bytes_a_point_in_a_binary_buffer():
    count = 70_000
    scores = np.random.default_rng(1).integers(0, 11, count) / 10
    widget = classified_points(count, scores=scores, score_name="neighbours shared with the reference model", color_by="score")
    state, paths, buffers = wire(widget)
    sizes = {path[0]: len(buffer) for path, buffer in zip(paths, buffers)}
    assert sizes["scores"] == 4 * count and sizes["colors"] == count
    assert sum(len(buffer) for buffer in buffers) == 21 * count
    json_part = {key: value for key, value in state.items() if key not in CODE_TRAITS}
    assert len(json.dumps(json_part)) < 2_000, "per-point scores leaked into the JSON part of the state"


def test_points_are_float32_centred_in_the_unit_cube():
    # Centre (2, 1, 5); the widest axis, z, spans 10, so every axis is divided by 5.
    points = np.array([[0, 0, 0], [4, 2, 0], [2, 1, 10]], dtype=np.float64)
    widget = cw.Scatter3D(points)
    sent = np.frombuffer(widget.points, dtype=np.float32).reshape(-1, 3)
    np.testing.assert_allclose(sent, [[-0.4, -0.2, -1], [0.4, 0.2, -1], [0.0, 0.0, 1]], atol=1e-6)
    assert widget.view == "3d"


def test_two_dimensional_points_open_in_2d_with_z_zero():
    widget = cw.Scatter3D(torch.tensor([[0.0, 0.0], [2.0, 1.0], [1.0, 2.0]]))
    sent = np.frombuffer(widget.points, dtype=np.float32).reshape(-1, 3)
    assert widget.view == "2d"
    np.testing.assert_array_equal(sent[:, 2], 0)
    np.testing.assert_allclose(sent[:, :2], [[-1, -1], [1, 0], [0, 1]])


def test_set_points_moves_the_same_points():
    widget = cw.Scatter3D(np.zeros((3, 3)), labels=[0, 1, 2])
    widget.selected = [1]
    widget.set_points(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
    np.testing.assert_allclose(np.frombuffer(widget.points, np.float32).reshape(-1, 3)[:, 0], [-1, 0, 1])
    assert widget.view == "2d" and widget.selected == [1] and list(widget.colors) == [0, 1, 2]
    with pytest.raises(ValueError, match="points"):
        widget.set_points(np.zeros((4, 3)))


def test_colour_by_label_prediction_and_correctness():
    labels = np.array([0, 1, 2, 2, 1])
    predictions = np.array([0, 2, 2, 1, 1])
    widget = cw.Scatter3D(np.zeros((5, 3)), labels=labels, predictions=predictions, class_names=["zero", "one", "two"])
    assert widget.color_by == "label"
    assert list(widget.colors) == [0, 1, 2, 2, 1]
    assert widget.legend == ["zero", "one", "two"]
    assert len(set(widget.palette)) == 3
    np.testing.assert_array_equal(np.frombuffer(widget.labels, np.uint16), labels)
    np.testing.assert_array_equal(np.frombuffer(widget.predictions, np.uint16), predictions)

    widget.color_by = "prediction"
    assert list(widget.colors) == [0, 2, 2, 1, 1]
    widget.color_by = "correct"
    assert list(widget.colors) == [0, 1, 0, 1, 0]
    assert widget.legend == ["correct", "wrong"]


def test_only_present_classes_get_colours_and_legend_entries():
    widget = cw.Scatter3D(np.zeros((3, 3)), labels=[7, 3, 7], class_names=[f"c{k}" for k in range(10)])
    assert widget.legend == ["c3", "c7"]
    assert list(widget.colors) == [1, 0, 1]


def test_beyond_255_classes_the_rarest_share_other():
    labels = np.concatenate([np.arange(300), np.arange(10)])  # classes 0..9 twice, 10..299 once
    widget = cw.Scatter3D(np.zeros((len(labels), 3)), labels=labels)
    assert len(widget.palette) == len(widget.legend) == scatter_data.MAX_PALETTE
    assert widget.legend[-1] == "other"
    colors = np.frombuffer(widget.colors, np.uint8)
    assert len(set(colors[labels < 10])) == 10 and scatter_data.MAX_PALETTE - 1 not in set(colors[labels < 10])
    assert (colors == scatter_data.MAX_PALETTE - 1).sum() == 300 - 255


def test_impossible_colouring_is_refused_and_keeps_the_old_one():
    widget = cw.Scatter3D(np.zeros((2, 3)), labels=[0, 1])
    before = (widget.colors, widget.palette)
    with pytest.raises(ValueError, match="color_by"):
        widget.color_by = "correct"
    assert widget.color_by == "label" and (widget.colors, widget.palette) == before


def test_without_labels_one_colour_no_legend():
    widget = cw.Scatter3D(np.zeros((4, 3)))
    assert widget.legend == [] and len(widget.palette) == 1 and widget.colors == bytes(4)


def test_predictions_alone_colour_by_prediction():
    widget = cw.Scatter3D(np.zeros((2, 3)), predictions=[1, 0])
    assert widget.color_by == "prediction" and list(widget.colors) == [1, 0]


def test_selected_is_sorted_unique_and_checked():
    widget = cw.Scatter3D(np.zeros((10, 3)))
    seen = []
    widget.observe(lambda change: seen.append(change["new"]), "selected")
    widget.selected = [7, 2, 7]
    assert widget.selected == [2, 7] and seen == [[2, 7]]
    with pytest.raises(traitlets.TraitError, match="selected"):
        widget.selected = [10]


def test_hover_thumbnails_travel_as_one_png_atlas():
    x, y, class_names = cw.demo.digits("test")
    widget = cw.Scatter3D(np.random.default_rng(0).normal(size=(40, 3)), labels=y[:40], images=x[:40],
                          class_names=class_names)
    state, paths, buffers = wire(widget)
    assert ["sprite"] in paths
    atlas = Image.open(io.BytesIO(widget.sprite))
    assert atlas.format == "PNG"
    assert widget.sprite_columns == 7  # ceil(sqrt(40))
    assert atlas.size == (7 * widget.sprite_size, 6 * widget.sprite_size)
    tile = atlas.convert("L").crop((widget.sprite_size, 0, 2 * widget.sprite_size, widget.sprite_size))
    expected = x[1, 0].numpy() * 255
    observed = np.asarray(tile.resize((32, 32)), dtype=np.float32)
    assert np.corrcoef(observed.ravel(), expected.ravel())[0, 1] > 0.95


# Five equal bins over [0, 1]; a score on an edge belongs to the bin above, and 1.0 to the last.
SCORES = [0.0, 0.1999, 0.2, 0.3, 0.4, 0.5999, 0.6, 0.7, 0.79, 0.8, 0.95, 1.0]
BINS = [0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4]


def test_colour_by_score_in_five_bins_red_to_green():
    widget = cw.Scatter3D(np.zeros((len(SCORES), 3)), labels=[0] * len(SCORES), scores=SCORES, score_name="agreement")
    assert widget.color_by == "label" and widget.score_name == "agreement"
    np.testing.assert_array_equal(np.frombuffer(widget.scores, np.float32), np.float32(SCORES))

    widget.color_by = "score"
    assert list(widget.colors) == BINS
    assert widget.legend == ["0–20%", "20–40%", "40–60%", "60–80%", "80–100%"]
    red, green = (np.array([int(code[i : i + 2], 16) for i in (1, 3, 5)]) for code in widget.palette[::4])
    assert red[0] > 200 > red[1] and green[1] > 150 > green[0], "low scores red, high scores green"


def test_shares_of_ten_neighbours_fall_in_the_bins_of_their_value():
    # The agreement of ten neighbours (shared / 10): 2, 4, 6, 8 of ten sit on the edges and land in the bin
    # above them, also when float64 arithmetic left them a hair below (0.7 - 0.3 is 0.39999999999999997).
    shared = np.arange(11)
    widget = cw.Scatter3D(np.zeros((11, 3)), scores=shared / 10, color_by="score")
    assert list(widget.colors) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    edges = np.array([0.2, 0.4, 0.6, 0.8])
    near_edges = np.concatenate([np.nextafter(edges, 0), [0.7 - 0.3, 0.19, 0.79]])
    widget = cw.Scatter3D(np.zeros((len(near_edges), 3)), scores=near_edges, color_by="score")
    assert list(widget.colors) == [1, 2, 3, 4, 2, 0, 3]


def test_set_scores_recolours_and_clearing_them_falls_back():
    widget = cw.Scatter3D(np.zeros((3, 3)), labels=[2, 0, 2])
    shown = []
    widget.observe(lambda change: shown.append(change["new"]), "colors")
    widget.set_scores([0.1, 0.5, 0.9], "agreement")
    assert shown == [] and widget.score_name == "agreement", "coloured by label, new scores leave the colours"
    widget.color_by = "score"
    assert list(widget.colors) == [0, 2, 4]
    widget.set_scores([1.0, 0.0, 0.45], "overlap")
    assert list(widget.colors) == [4, 0, 2] and widget.score_name == "overlap"

    widget.set_scores(None)
    assert widget.scores == b"" and widget.score_name == ""
    assert widget.color_by == "label" and list(widget.colors) == [1, 0, 1] and widget.legend == ["0", "2"]
    with pytest.raises(ValueError, match="color_by"):
        widget.color_by = "score"

    predicted = cw.Scatter3D(np.zeros((2, 3)), predictions=[1, 0], scores=[0.3, 0.9], color_by="score")
    predicted.set_scores(None)
    assert predicted.color_by == "prediction" and list(predicted.colors) == [1, 0]


@pytest.mark.parametrize(
    "scores, given",
    [
        ([0.5, 0.5], "got shape (2,)"),
        ([[0.5, 0.5, 0.5]], "got shape (1, 3)"),
        ([0.5, np.nan, 0.5], "nan at point 1"),
        ([0.5, 0.5, np.inf], "inf at point 2"),
        ([0.5, 1.2, 0.5], "1.2 at point 1"),
        ([-0.1, 0.5, 0.5], "-0.1 at point 0"),
    ],
)
def test_bad_scores_are_refused_and_say_what_was_given(scores, given):
    widget = cw.Scatter3D(np.zeros((3, 3)), labels=[0, 1, 2], scores=[0.1, 0.2, 0.3], color_by="score")
    before = (widget.scores, widget.colors)
    with pytest.raises(ValueError, match="^scores: ") as error:
        widget.set_scores(scores, "agreement")
    assert given in str(error.value)
    assert (widget.scores, widget.colors) == before
    with pytest.raises(ValueError, match="^scores: "):
        cw.Scatter3D(np.zeros((3, 3)), scores=scores)


@pytest.mark.parametrize(
    "kwargs, error, argument",
    [
        ({"points": np.zeros((4, 4))}, ValueError, "points"),
        ({"points": np.zeros((0, 3))}, ValueError, "points"),
        ({"points": np.full((2, 3), np.inf)}, ValueError, "points"),
        ({"points": np.zeros((2, 3)), "labels": [0, 1, 2]}, ValueError, "labels"),
        ({"points": np.zeros((2, 3)), "labels": [0.5, 1.0]}, TypeError, "labels"),
        ({"points": np.zeros((2, 3)), "predictions": [-1, 0]}, ValueError, "predictions"),
        ({"points": np.zeros((2, 3)), "images": np.zeros((3, 8, 8), np.uint8)}, ValueError, "images"),
        ({"points": np.zeros((2, 3)), "labels": [0, 1], "color_by": "correct"}, ValueError, "color_by"),
        ({"points": np.zeros((2, 3)), "labels": [0, 1], "color_by": "score"}, ValueError, "color_by"),
        ({"points": np.zeros((2, 3)), "scores": ["high", "low"]}, TypeError, "scores"),
        ({"points": np.zeros((2, 3)), "scores": [0.5, 1.0], "score_name": 3}, TypeError, "score_name"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        cw.Scatter3D(**kwargs)


def test_the_widget_loads_the_built_bundle():
    assert scatter3d.BUNDLE.is_file() and scatter3d.BUNDLE.stat().st_size > 10_000
    assert str(cw.Scatter3D._esm) == scatter3d.BUNDLE.read_text()
