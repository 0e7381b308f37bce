"""Filters: a conv layer's learned weights, and the pattern each filter responds to most."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import traitlets
from torch import nn

from .. import render
from ..inputs import fixed_input_size
from . import drawing
from .base import LayerChooser, Panel

MAX_INPUT_CHANNELS_SHOWN = 24
PATTERN_SIDE = 96
"""Side of the patterns of a model that reads pictures of any size; a ViT's are of the one size it reads."""
PATTERN_STEPS = 64


def pattern_grid(patterns) -> np.ndarray:
    """Patterns ``(F, C, S, S)`` in [0, 1] side by side."""
    tiles = np.stack([render.to_rgb(pattern.permute(1, 2, 0).numpy() if pattern.shape[0] == 3 else pattern[0].numpy()) for pattern in patterns])
    return render.arrange(tiles, columns=min(len(tiles), 8), padding=4)


class FiltersPanel(Panel):
    """The weights of chosen filters as tiles, and, on demand, the picture each filter likes best."""

    title = "Filters"
    caption = "what a filter has learned: its weights (blue negative, red positive) and the picture that excites it most"
    layer = traitlets.Unicode()

    def _build(self):
        # Filters are a convolution's weights: a transformer's blocks, shown as maps elsewhere, have none.
        self.filter_layers = [
            (name, shape) for name, shape in self.session.conv_layers() if isinstance(self.session.model.get_submodule(name), nn.Conv2d)
        ]
        self.layer_chooser = LayerChooser(self.session, layers=self.filter_layers)
        self.first = widgets.IntSlider(value=0, min=0, max=0, description="first filter", layout=widgets.Layout(width="360px"))
        self.count = widgets.IntSlider(value=8, min=1, max=16, description="how many", layout=widgets.Layout(width="300px"))
        self.weights_view = widgets.Image(format="png", layout=widgets.Layout(max_width="100%", object_fit="contain"))
        self.weights_label = widgets.HTML()
        self.steps = widgets.IntSlider(value=PATTERN_STEPS, min=8, max=512, step=8, description="steps", layout=widgets.Layout(width="300px"))
        self.find = widgets.Button(description="Find patterns", icon="play", button_style="primary", tooltip="optimise a picture for each chosen filter")
        self.patterns_view = widgets.Image(format="png", layout=widgets.Layout(max_width="100%", object_fit="contain", display="none"))
        self.patterns_label = widgets.HTML("<span style='font-size:12px'>press <b>Find patterns</b> to grow them</span>")
        self.weights_view.add_class("cnnviz-filter-weights")
        self.patterns_view.add_class("cnnviz-filter-patterns")
        self.find.add_class("cnnviz-find-patterns")
        self._weights_picture: np.ndarray | None = None
        self._patterns_picture: np.ndarray | None = None
        return [
            self.layer_chooser,
            widgets.HBox([self.first, self.count]),
            self.weights_view,
            self.weights_label,
            widgets.HBox([self.find, self.steps]),
            self.patterns_view,
            self.patterns_label,
        ]

    def _start(self) -> None:
        if not self.filter_layers:
            self.show_error(ValueError(f"model: {type(self.session.model).__name__} has no Conv2d layer whose filters could be shown"))
            return
        self.layer = self.filter_layers[0][0]
        widgets.link((self, "layer"), (self.layer_chooser, "value"))
        self.first.observe(lambda _: self.refresh(), "value")
        self.count.observe(lambda _: self.refresh(), "value")
        self.find.on_click(lambda _: self.find_patterns())
        self.observe(self._on_layer, "layer")
        self._on_layer(None)

    @traitlets.validate("layer")
    def _check_layer(self, proposal):
        name = self.check_layer(proposal["value"])
        if name not in dict(self.filter_layers):
            raise traitlets.TraitError(f"layer: {name!r} has no convolution filters; choose a Conv2d layer from the list")
        return name

    def _on_layer(self, change) -> None:
        filters = dict(self.filter_layers)[self.layer][0]
        self.stop()
        with self.settling():
            self.first.max = max(0, filters - 1)
            self.count.max = min(16, filters)

    def filters(self) -> list[int]:
        total = dict(self.filter_layers)[self.layer][0]
        return list(range(self.first.value, min(self.first.value + self.count.value, total)))

    def refresh(self) -> None:
        """Redraw the weights of the chosen filters."""
        key = (self.layer, tuple(self.filters()))
        self.request(lambda: self._weights(key), self._show_weights)

    def _weights(self, key):
        layer, filters = key
        weights = self.session.filter_weights(layer)[list(filters)]
        inputs = weights.shape[1]
        if inputs == 1:
            # One input channel (depthwise or greyscale): a single row of tiles, one per filter, reads best.
            shown = weights.transpose(0, 1)
        else:
            shown = weights if inputs == 3 else weights[:, :MAX_INPUT_CHANNELS_SHOWN]
        zoom = max(2, 48 // max(weights.shape[-2:])) if inputs in (1, 3) else max(2, 24 // max(weights.shape[-2:]))
        return key, inputs, tuple(weights.shape[-2:]), render.filter_tiles(shown, zoom=zoom, padding=2)

    def _show_weights(self, result) -> None:
        (layer, filters), inputs, (height, width), picture = result
        self._weights_picture = picture
        self.weights_view.value = render.to_png(picture)
        self.weights_view.layout.width = f"{picture.shape[1]}px"
        if inputs == 3:
            how = "one tile per filter, its red, green and blue weights as colours"
        elif inputs == 1:
            how = "one tile per filter"
        else:
            kept = min(inputs, MAX_INPUT_CHANNELS_SHOWN)
            how = f"one row per filter, one tile per input channel ({kept} of {inputs} shown)"
        self.weights_label.value = (
            f"<span style='font-size:12px'>{drawing.escape(layer)}: filters {filters[0]}–{filters[-1]}, "
            f"{height}×{width} weights; {how}</span>"
        )

    def find_patterns(self) -> None:
        """Grow the pattern of each chosen filter by gradient ascent, showing it as it emerges."""
        key = (self.layer, tuple(self.filters()), self.steps.value)
        self.request_long(f"growing {len(key[1])} patterns…", lambda task: self._grow(task, key), self._show_patterns)

    def _grow(self, task, key):
        layer, filters, steps = key

        def emerging(fraction, patterns=None) -> None:
            task.checkpoint(fraction)
            if patterns is not None:
                self._apply(self._show_patterns, (key, round(fraction * steps), patterns))

        task.checkpoint(0.0)
        size = fixed_input_size(self.session.model) or PATTERN_SIDE
        patterns = self.session.filter_patterns(layer, list(filters), size, steps, checkpoint=emerging)
        return key, steps, patterns

    def _show_patterns(self, result) -> None:
        (layer, filters, steps), step, patterns = result
        self._patterns_picture = pattern_grid(patterns)
        self.patterns_view.value = render.to_png(self._patterns_picture)
        self.patterns_view.layout.width = f"{self._patterns_picture.shape[1]}px"
        self.patterns_view.layout.display = "block"
        state = "done" if step == steps else f"step {step} of {steps}"
        self.patterns_label.value = (
            f"<span style='font-size:12px'>patterns of {drawing.escape(layer)} filters {filters[0]}–{filters[-1]} "
            f"({state}): the pictures that make each filter respond most</span>"
        )

    def picture(self) -> bytes:
        shown = [p for p in (self._weights_picture, self._patterns_picture) if p is not None]
        if not shown:
            return b""
        width = max(p.shape[1] for p in shown)
        padded = [np.pad(p, ((0, 8), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in shown]
        return render.to_png(np.concatenate(padded, axis=0))
