"""Stop in Compare, on the pretrained demo model: control comes back within a second, whatever runs.

Everything the panel computes is one long work (one progress bar, one Stop), and every long method in it
takes the checkpoint between its batches (see ``cnnviz_widgets.checkpoint``).
"""

from __future__ import annotations

import threading
import time

import pytest

import cnnviz_widgets as cw
from cnnviz_widgets.session import Session

STOP_WITHIN_SECONDS = 1.0
STARTED_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def demo():
    model, preprocess, class_names = cw.demo.imagenet_model()
    return model, {"chelsea": cw.demo.photos()["chelsea"]}, preprocess, class_names


def panel_watching(demo, call: str, method: str, checkpoints: int):
    """A Compare panel on the demo model whose session sets the returned event once its ``call``
    (``"explanation"`` or ``"sanity"``) of ``method`` has passed ``checkpoints`` checkpoints: well inside
    the work, past the setup of its first passes."""
    model, pictures, preprocess, class_names = demo
    session = Session(model, pictures, preprocess=preprocess, class_names=class_names)
    inside = threading.Event()
    real = getattr(session, call)

    def watched(index, asked, layer, target, checkpoint=None):
        if asked != method or checkpoint is None:
            return real(index, asked, layer, target, checkpoint)
        seen = []

        def counting(fraction=None, partial=None):
            seen.append(fraction)
            if len(seen) >= checkpoints:
                inside.set()
            checkpoint(fraction)

        return real(index, asked, layer, target, counting)

    setattr(session, call, watched)
    return cw.ComparePanel(session=session), inside


def stop_and_time(panel) -> float:
    """Seconds from Stop until the panel is idle (its runner has nothing left and ``wait`` is true)."""
    start = time.monotonic()
    panel.stop()
    assert panel.wait(30), "the panel never came back"
    elapsed = time.monotonic() - start
    assert not panel.long_runner.busy
    return elapsed


def test_stop_during_score_cam_returns_control_within_a_second(demo):
    """Score-CAM at the last conv layer, 1,280 channels: a pass of four masked pictures between checkpoints."""
    panel, inside = panel_watching(demo, "explanation", "score-cam", checkpoints=12)
    # Asked for at once (it would wait for a click where it is estimated above 10 s), it runs first.
    panel.compute("score-cam")
    assert inside.wait(STARTED_TIMEOUT), "Score-CAM never got under way"
    elapsed = stop_and_time(panel)
    print(f"Stop during Score-CAM: idle after {elapsed:.3f} s")
    assert elapsed < STOP_WITHIN_SECONDS
    assert "score-cam" not in panel.scores
    assert panel.compute_buttons["score-cam"].layout.display != "none", "the card offers to compute it again"
    assert panel.error == ""
    panel.close()


def test_stop_during_the_sanity_check_returns_control_within_a_second(demo):
    """The Grad-CAM cascade, one layer of EfficientNet-Lite0 randomised after another."""
    panel, inside = panel_watching(demo, "sanity", "grad-cam", checkpoints=6)
    panel.check_sanity("grad-cam")
    assert inside.wait(STARTED_TIMEOUT), "the sanity check never got under way"
    elapsed = stop_and_time(panel)
    print(f"Stop during the sanity check: idle after {elapsed:.3f} s")
    assert elapsed < STOP_WITHIN_SECONDS
    assert "stopped" in panel.sanity_title.value
    assert panel.sanity_strip.layout.display == "none"
    assert panel.error == ""
    panel.close()
