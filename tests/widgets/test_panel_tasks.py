"""The background runner: newest request wins, stop works, a failure leaves it serving."""

import threading
import time

import pytest
import torch
from torch import nn

import cnnviz_widgets as cw
from cnnviz_widgets.widgets.tasks import Cancelled, TaskRunner


def test_a_newer_request_supersedes_an_older_one():
    applied, started = [], threading.Event()

    def slow(task):
        started.set()
        for _ in range(200):
            task.checkpoint()
            time.sleep(0.005)
        return "old"

    runner = TaskRunner()
    runner.submit(slow, applied.append)
    assert started.wait(5)
    runner.submit(lambda task: "new", applied.append)
    assert runner.wait(10)
    assert applied == ["new"]


def test_cancel_stops_the_running_task_and_the_next_request_is_answered():
    applied, started, stopped = [], threading.Event(), threading.Event()

    def endless(task):
        started.set()
        try:
            while True:
                task.checkpoint(0.5)
                time.sleep(0.005)
        except Cancelled:
            stopped.set()
            raise

    progress = []
    runner = TaskRunner(on_progress=progress.append)
    runner.submit(endless, applied.append)
    assert started.wait(5)
    runner.cancel()
    assert stopped.wait(5)
    assert runner.wait(5)
    runner.submit(lambda task: 42, applied.append)
    assert runner.wait(5)
    assert applied == [42]
    assert progress and set(progress) == {0.5}


def test_a_failing_task_reports_its_error_and_the_runner_keeps_serving():
    errors, applied = [], []
    runner = TaskRunner(on_error=errors.append)

    def fail(task):
        raise ValueError("layer: no such layer")

    runner.submit(fail, applied.append)
    assert runner.wait(5)
    runner.submit(lambda task: "fine", applied.append)
    assert runner.wait(5)
    assert [str(error) for error in errors] == ["layer: no such layer"]
    assert applied == ["fine"]


def test_a_long_method_stops_at_the_checkpoint_after_a_cancel():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    runner = TaskRunner()
    seen = []

    def work(task):
        def checkpoint(fraction):
            seen.append(fraction)
            if len(seen) == 2:
                task.cancel()
            task.checkpoint(fraction)

        return cw.occlusion(model, torch.zeros(3, 16, 16), 0, window=4, stride=4, batch_size=4, checkpoint=checkpoint)

    applied = []
    runner.submit(work, applied.append)
    assert runner.wait(5)
    # 16 patch positions in batches of 4: the cancel at the second batch stops it there.
    assert seen == [0.0, 0.25] and applied == []


def test_close_ends_the_worker_thread_and_refuses_new_work():
    runner = TaskRunner()
    started = threading.Event()

    def endless(task):
        started.set()
        while True:
            task.checkpoint()
            time.sleep(0.001)

    runner.submit(endless, lambda result: None)
    assert started.wait(5)
    runner.close()
    assert not runner.alive
    with pytest.raises(RuntimeError, match="closed"):
        runner.submit(lambda task: None, lambda result: None)
