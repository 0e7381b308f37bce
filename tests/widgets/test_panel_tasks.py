"""The background runner: newest request wins, stop works, a failure leaves it serving."""

import threading
import time

import pytest
import torch
from torch import nn

from cnnviz_widgets.widgets.tasks import Cancelled, Interruptible, TaskRunner


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


def test_interruptible_model_is_a_checkpoint_per_forward_call():
    model = nn.Linear(3, 2)
    runner = TaskRunner()
    seen = {}

    def work(task):
        wrapped = Interruptible(model, task, total_images=4)
        wrapped(torch.zeros(2, 3))
        task.cancel()
        with pytest.raises(Cancelled):
            wrapped(torch.zeros(2, 3))
        seen["calls"] = wrapped._seen
        return True

    runner.submit(work, lambda result: None)
    assert runner.wait(5)
    assert seen["calls"] == 2
