"""Replicas follow every change of the user's weights, whatever wrote it, and one watcher per model tells
whoever still listens."""

import gc
import logging
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import cnnviz_widgets as cw
from cnnviz_widgets import replica
from cnnviz_widgets.replica import Listeners, fingerprint, replicas_of
from cnnviz_widgets.session import Session
from tests.stand_ins import wait_until


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


def set_one_element(model):
    model[7].weight.data[0, 3] = 2.5


WRITES = {
    "data.add_": lambda model: model[0].weight.data.add_(0.3),
    "data.copy_": lambda model: model[3].weight.data.copy_(torch.randn_like(model[3].weight)),
    "data.mul_": lambda model: model[7].weight.data.mul_(-1.0),
    "one element through .data": set_one_element,
    "a buffer through .data": lambda model: model[1].running_mean.data.fill_(0.4),
    "prune": lambda model: prune.l1_unstructured(model[3], "weight", amount=0.6),
}


def probabilities_of(model, x):
    with torch.no_grad():
        return torch.softmax(model(x).double(), dim=1)[0].numpy()


@pytest.mark.parametrize("write", list(WRITES))
def test_every_write_of_the_weights_is_seen_by_replicas_caches_and_the_fast_copy(write):
    model = small_cnn()
    picture = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    session = Session(model, [picture], cache=False)
    x = session.input(0)
    before = {
        "probabilities": session.probabilities(0),
        "grad_cam": cw.grad_cam(model, x, "3", 0),
        "occlusion": cw.occlusion(model, x, 0, window=4, stride=2).scores,
    }
    torch.manual_seed(2)
    WRITES[write](model)
    # The same model written the same way, never seen before: its replicas start from its current weights.
    fresh = small_cnn()
    torch.manual_seed(2)
    WRITES[write](fresh)
    after = {
        "probabilities": session.probabilities(0),
        "grad_cam": cw.grad_cam(model, x, "3", 0),
        "occlusion": cw.occlusion(model, x, 0, window=4, stride=2).scores,
    }
    truth = {
        "probabilities": probabilities_of(model, x),
        "grad_cam": cw.grad_cam(fresh, x, "3", 0),
        "occlusion": cw.occlusion(fresh, x, 0, window=4, stride=2).scores,
    }
    assert not np.allclose(truth["probabilities"], before["probabilities"])
    np.testing.assert_allclose(after["probabilities"], truth["probabilities"], rtol=1e-6)
    for name in ("grad_cam", "occlusion"):
        assert not torch.allclose(truth[name], before[name], atol=1e-6), name
        torch.testing.assert_close(after[name], truth[name], rtol=1e-5, atol=1e-6)
    assert session.generation == 1


def test_a_single_element_of_a_large_tensor_changes_the_fingerprint():
    model = nn.Linear(2048, 2048)
    seen = fingerprint(model)
    model.weight.data[1234, 567] += 1e-6
    assert fingerprint(model) != seen
    # Two values swapped: the same multiset of values, which a plain sum would not see.
    seen = fingerprint(model)
    row = model.weight.data[7].clone()
    model.weight.data[7], model.weight.data[8] = model.weight.data[8].clone(), row
    assert fingerprint(model) != seen


def watcher_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "cnnviz-weights-watch"]


class Counter:
    calls = 0

    def changed(self, generation):
        Counter.calls += 1


def test_one_watcher_per_model_that_ends_with_its_last_listener(monkeypatch):
    monkeypatch.setattr(replica, "WATCH_SECONDS", 0.05)
    model = small_cnn()
    picture = np.zeros((16, 16, 3), np.uint8)
    assert wait_until(lambda: not watcher_threads())
    threads_before = threading.active_count()
    sessions = [Session(model, [picture], cache=False) for _ in range(10)]
    listeners = [Counter() for _ in sessions]
    for session, listener in zip(sessions, listeners):
        session.watch(listener.changed)
    assert len(watcher_threads()) == 1

    Counter.calls = 0
    with torch.no_grad():
        model[7].bias.data += 1.0
    assert wait_until(lambda: Counter.calls == 10)

    del sessions, listeners, session, listener
    gc.collect()
    assert wait_until(lambda: not watcher_threads())
    assert threading.active_count() == threads_before
    Counter.calls = 0
    with torch.no_grad():
        model[7].bias.data += 1.0
    time.sleep(0.3)
    assert Counter.calls == 0


def test_a_listener_that_raises_is_logged_and_dropped_and_the_others_are_still_told(monkeypatch, caplog):
    monkeypatch.setattr(replica, "WATCH_SECONDS", 0.05)
    model = small_cnn()
    told = []

    def broken(generation):
        raise RuntimeError("a broken listener")

    def listener(generation):
        told.append(generation)

    replicas = replicas_of(model)
    replicas.watch(broken)
    replicas.watch(listener)
    with caplog.at_level(logging.ERROR, logger="cnnviz_widgets.replica"):
        model[7].bias.data += 1.0
        assert wait_until(lambda: told == [1])
        model[7].bias.data += 1.0
        assert wait_until(lambda: told == [1, 2])
    failures = [record for record in caplog.records if "a broken listener" in (record.exc_text or "")]
    assert len(failures) == 1
    replicas.unwatch(listener)
    assert wait_until(lambda: not replicas.watched)


def test_listeners_hold_bound_methods_and_functions_weakly():
    listeners = Listeners()
    counter = Counter()
    listeners.add(counter.changed)
    listeners.add(lambda generation: None)
    assert len(listeners.alive()) == 1
    del counter
    gc.collect()
    assert listeners.alive() == []
    with pytest.raises(TypeError, match="listener: expected a callable, got int"):
        listeners.add(3)
