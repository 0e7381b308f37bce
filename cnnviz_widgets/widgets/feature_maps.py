"""Feature maps: what each filter of a layer makes of the chosen picture."""

from __future__ import annotations

import ipywidgets as widgets
import traitlets

from .. import render
from . import drawing
from .base import ImagePicker, LayerChooser, Panel
from .picture import ClickablePicture

MAPS_PER_PAGE = 64


class FeatureMapPanel(Panel):
    """The grid of a conv layer's output maps for one image; click a map to enlarge it.

    ``layer`` and ``image`` choose what is shown; ``maps`` holds the layer's output ``(C, h, w)`` on screen.
    """

    title = "Feature maps"
    caption = "how the picture looks after one layer: each tile is what one filter found (bright = strong)"
    layer = traitlets.Unicode()
    channel = traitlets.Int(0, help="the map shown enlarged")

    def _build(self):
        self.picker = ImagePicker(self.session)
        self.layer_chooser = LayerChooser(self.session)
        self.scaling = widgets.ToggleButtons(
            options=[("each map its own scale", "per_map"), ("one scale for all", "shared")],
            value="per_map",
            style={"button_width": "190px"},
        )
        self.cmap = widgets.Dropdown(options=["viridis", "gray", "magma", "jet"], value="viridis", description="colours", layout=widgets.Layout(width="200px"))
        self.page = widgets.IntSlider(value=0, min=0, max=0, description="maps from", layout=widgets.Layout(width="360px"))
        self.grid = ClickablePicture(width=470)
        self.grid.on_point(self._grid_clicked)
        self.zoomed = widgets.Image(format="png", layout=widgets.Layout(width="256px", height="256px", object_fit="contain"))
        self.zoom_label = widgets.HTML()
        self.grid.add_class("cnnviz-feature-grid")
        self.zoomed.add_class("cnnviz-feature-zoom")
        self.grid_label = widgets.HTML()
        self._png = b""
        self._shown: tuple | None = None
        self.maps = None
        for control in (self.scaling, self.cmap, self.page):
            control.observe(lambda _: self.refresh(), "value")
        views = widgets.HBox(
            [widgets.VBox([self.grid, self.grid_label]), widgets.VBox([self.zoomed, self.zoom_label])],
            layout=widgets.Layout(align_items="flex-start", grid_gap="16px"),
        )
        return [self.picker, widgets.HBox([self.layer_chooser, self.cmap]), widgets.HBox([self.scaling, self.page]), views]

    def _start(self) -> None:
        self.layer = self.session.first_layer()
        widgets.link((self.picker, "index"), (self, "image"))
        widgets.link((self, "layer"), (self.layer_chooser, "value"))
        self.refresh()

    @traitlets.validate("layer")
    def _check_layer(self, proposal):
        return self.check_layer(proposal["value"])

    @traitlets.observe("image", "layer")
    def _source_changed(self, change) -> None:
        channels = dict(self.session.conv_layers())[self.layer][0] if self.layer else 0
        pages = max(0, (channels - 1) // MAPS_PER_PAGE)
        with self.settling():
            if change["name"] == "layer":
                self.page.value = 0
                self.channel = 0
            self.page.max = pages * MAPS_PER_PAGE
            self.page.step = MAPS_PER_PAGE
            self.page.layout.display = "flex" if pages else "none"

    @traitlets.observe("channel")
    def _channel_changed(self, change) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Recompute the view for the current image, layer and options."""
        if not self.layer:
            return
        key = (self.image, self.layer, self.scaling.value, self.cmap.value, self.page.value, self.channel)
        self.request(lambda: self._render(key), self._show)

    def _render(self, key):
        image, layer, scaling, cmap, first, channel = key

        def compute():
            maps = self.session.feature_maps(image, layer)
            shown = maps[first : first + MAPS_PER_PAGE]
            grid, _ = render.feature_grid(shown, scaling, cmap)
            low, high = (float(shown.min()), float(shown.max())) if scaling == "shared" else (None, None)
            single = maps[min(channel, len(maps) - 1)]
            return {
                "key": key,
                "maps": maps,
                "grid": render.to_png(grid),
                "zoomed": render.to_png(render.enlarged_map(single, cmap, low=low, high=high)),
                "count": len(maps),
                "first": first,
                "shown": len(shown),
                "size": tuple(maps.shape[1:]),
                "range": (float(single.min()), float(single.max())),
            }

        return self.session.cached("pictures", ("feature maps", *key), compute)

    def _show(self, result) -> None:
        image, _, scaling, cmap, _, _ = result["key"]
        # The other layers of this image, in the current options, drawn ahead: a layer change is then instant.
        self.prefetch(
            [lambda name=name: self._render((image, name, scaling, cmap, 0, 0)) for name, _ in self.session.conv_layers()]
        )
        self._shown = result["key"]
        self.maps = result["maps"]
        self._png = result["grid"]
        self.grid.value = result["grid"]
        self.zoomed.value = result["zoomed"]
        image, layer, scaling, _, first, channel = result["key"]
        height, width = result["size"]
        last = first + result["shown"]
        self.grid_label.value = (
            f"<span style='font-size:12px'>{layer}: maps {first}–{last - 1} of {result['count']} "
            f"({height}×{width} each, {'each on its own scale' if scaling == 'per_map' else 'one shared scale'}); "
            "click a map to enlarge it</span>"
        )
        low, high = result["range"]
        self.zoom_label.value = f"<span style='font-size:12px'>map {channel}: values {low:.3g} to {high:.3g}</span>"

    def _grid_clicked(self, x: float, y: float, kind: str) -> None:
        if self._shown is None:
            return
        first = self._shown[4]
        count = dict(self.session.conv_layers())[self.layer][0]
        shown = min(MAPS_PER_PAGE, count - first)
        tile = drawing.tile_at(x, y, shown, render.MAP_COLUMNS)
        if tile is not None:
            self.channel = first + tile

    def picture(self) -> bytes:
        return self._png
