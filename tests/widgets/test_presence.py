"""A dashboard whose every view was taken off (its cell run again) stops following the model and ends its
threads; shown again, it recomputes what changed meanwhile."""

import threading
import time

import numpy as np
import torch

import cnnviz_widgets as cw
from cnnviz_widgets import render, replica
from cnnviz_widgets.widgets import dashboard as dashboard_module
from cnnviz_widgets.widgets import presence
from panel_support import pixels, settled
from tests.stand_ins import wait_until

PICTURES = 6


def show(widget, event):
    """What the browser sends when a view is put on a page ("shown") or taken off ("removed")."""
    widget._handle_custom_msg({"event": event}, [])


def test_ten_dashboards_of_cells_run_again_stop_and_one_shown_again_catches_up(monkeypatch):
    monkeypatch.setattr(replica, "WATCH_SECONDS", 0.05)
    monkeypatch.setattr(presence, "GONE_SECONDS", 0.1)
    told = []
    weights_changed = dashboard_module.Dashboard._weights_changed

    def counted(self, generation):
        told.append(generation)
        weights_changed(self, generation)

    monkeypatch.setattr(dashboard_module.Dashboard, "_weights_changed", counted)
    x, _, names = cw.demo.digits("test")
    model, pictures = cw.demo.digits_model(), cw.demo.digit_pictures(x[:PICTURES])
    threads_before = set(threading.enumerate())

    def started_since():
        return [thread.name for thread in threading.enumerate() if thread not in threads_before]

    dashboards = []
    for _ in range(10):
        dashboard = cw.explore(model, pictures, class_names=names, preprocess=cw.demo.digits_preprocess, cache=False)
        show(dashboard.presence, "shown")
        dashboards.append(settled(dashboard))
    assert wait_until(lambda: any(thread.name == "cnnviz-weights-watch" for thread in threading.enumerate()))

    # Every cell run again: its output, and so the dashboard's only view, is taken off the page.
    for dashboard in dashboards:
        show(dashboard.presence, "removed")
    assert wait_until(lambda: all(dashboard.presence.gone for dashboard in dashboards))
    assert wait_until(lambda: not started_since()), started_since()

    with torch.no_grad():
        model.features.conv3.weight.mul_(-1.0)
    time.sleep(0.5)
    assert told == [] and not started_since()

    # Displayed again: the dashboard follows the model again and shows the new weights' Grad-CAM.
    again = dashboards[3]
    show(again.presence, "shown")
    settled(again)
    assert len(told) == 1
    grad_cam = again.grad_cam
    x0 = cw.demo.digits_preprocess(pictures[grad_cam.image])
    expected = render.overlay(grad_cam.session.view(grad_cam.image), cw.grad_cam(model, x0, grad_cam.layer, grad_cam.target), alpha=0.5, cmap="jet")
    np.testing.assert_array_equal(pixels(grad_cam.left.value), expected)
    for dashboard in dashboards:
        dashboard.close()


def test_a_view_taken_off_and_put_back_within_a_moment_keeps_the_work_going(monkeypatch):
    monkeypatch.setattr(presence, "GONE_SECONDS", 0.3)
    x, _, names = cw.demo.digits("test")
    panel = cw.GradCAMPanel(cw.demo.digits_model(), cw.demo.digit_pictures(x[:PICTURES]), cw.demo.digits_preprocess, names, cache=False)
    show(panel.presence, "shown")
    show(panel.presence, "shown")
    show(panel.presence, "removed")
    time.sleep(0.5)
    assert panel.presence.views == 1 and not panel.presence.gone
    show(panel.presence, "removed")
    show(panel.presence, "shown")
    time.sleep(0.5)
    assert not panel.presence.gone
    panel.close()


def test_a_panel_never_shown_works_as_ever():
    x, _, names = cw.demo.digits("test")
    panel = settled(cw.GradCAMPanel(cw.demo.digits_model(), cw.demo.digit_pictures(x[:PICTURES]), cw.demo.digits_preprocess, names, cache=False))
    assert panel.presence.views == 0 and not panel.presence.gone and panel.left.value
    panel.close()
