"""The pass over every image runs once however many panels ask at once, and a panel waiting on it can stop."""

import threading
import time

import numpy as np
import pytest
import torch

import cnnviz_widgets as cw
from cnnviz_widgets.session import Session, dataset_pass
from cnnviz_widgets.widgets.mistakes import MistakesPanel
from cnnviz_widgets.widgets.projector_panel import ProjectorPanel
from cnnviz_widgets.widgets.tasks import Cancelled

IMAGES = 120


@pytest.fixture
def digits():
    x, y, names = cw.demo.digits("test")
    return cw.demo.digits_model(), cw.demo.digit_pictures(x[:IMAGES]), y[:IMAGES], names


@pytest.fixture
def counted_pass(monkeypatch):
    """Counts the passes over the images, each slowed down so that the askers overlap."""
    passes = []
    run = dataset_pass.evaluate_and_embed

    def counted(*args, checkpoint=None, **kwargs):
        passes.append(threading.get_ident())
        for step in range(10):
            time.sleep(0.05)
            if checkpoint is not None:
                checkpoint(step / 20)
        return run(*args, checkpoint=checkpoint, **kwargs)

    monkeypatch.setattr(dataset_pass, "evaluate_and_embed", counted)
    return passes


def test_two_askers_at_once_share_one_pass(digits, counted_pass):
    model, pictures, labels, names = digits
    session = Session(model, pictures, cw.demo.digits_preprocess, names, labels, cache=False)
    results = {}
    askers = [
        threading.Thread(target=lambda: results.setdefault("evaluation", session.evaluation(lambda *a, **k: None))),
        threading.Thread(target=lambda: results.setdefault("embeddings", session.embeddings(None, lambda *a, **k: None))),
    ]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(60)
    assert len(counted_pass) == 1
    expected = cw.evaluate(model, torch.cat([cw.demo.digits_preprocess(picture) for picture in pictures]), labels)
    np.testing.assert_array_equal(results["evaluation"].predictions, expected.predictions)
    assert results["embeddings"].shape == (IMAGES, 64)


def test_mistakes_and_projector_opened_together_read_the_images_once_and_the_waiter_can_stop(digits, counted_pass):
    model, pictures, labels, names = digits
    session = Session(model, pictures, cw.demo.digits_preprocess, names, labels, cache=False)
    mistakes = MistakesPanel(session=session)
    projector = ProjectorPanel(session=session)
    time.sleep(0.2)
    assert projector.long_runner.busy
    stopped = time.monotonic()
    projector.stop()
    assert projector.long_runner.wait(1.0), "the projector waiting on the pass did not stop within 1 s"
    assert time.monotonic() - stopped < 1.0
    assert mistakes.wait(60) and mistakes.evaluation is not None
    projector.refresh()
    assert projector.wait(60) and projector.scatter is not None
    assert len(counted_pass) == 1
    for panel in (mistakes, projector):
        panel.close()


def test_a_stopped_pass_is_taken_over_by_the_panel_that_waited(digits, counted_pass):
    model, pictures, labels, names = digits
    session = Session(model, pictures, cw.demo.digits_preprocess, names, labels, cache=False)
    stop = threading.Event()

    def stopping(fraction=None, partial=None):
        if stop.is_set():
            raise Cancelled

    def first():
        with pytest.raises(Cancelled):
            session.evaluation(stopping)

    owner = threading.Thread(target=first)
    owner.start()
    time.sleep(0.15)
    taken = {}
    waiter = threading.Thread(target=lambda: taken.setdefault("evaluation", session.evaluation(lambda *a, **k: None)))
    waiter.start()
    stop.set()
    owner.join(30)
    waiter.join(60)
    assert len(counted_pass) == 2 and counted_pass[1] != counted_pass[0]
    assert taken["evaluation"].predictions.shape == (IMAGES,)
