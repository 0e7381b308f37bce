"""The stop-and-progress protocol: its helpers, and the one exception a Stop raises."""

from __future__ import annotations

import pytest

from cnnviz_widgets.checkpoint import Cancelled, check, scaled
from cnnviz_widgets.widgets import tasks


def test_check_passes_a_partial_result_only_when_there_is_one():
    calls = []
    check(None, 0.5)
    check(lambda *arguments: calls.append(arguments), 0.25)
    check(lambda *arguments: calls.append(arguments), 0.5, "the map so far")
    assert calls == [(0.25,), (0.5, "the map so far")]


def test_scaled_maps_a_sub_steps_fraction_into_its_part_of_the_work():
    seen = []
    sub_step = scaled(seen.append, 0.2, 0.6)
    for fraction in (0.0, 0.5, 1.0, 1.5, -1.0):
        sub_step(fraction)
    # The sub-step's own result so far is not the whole work's: it is not passed on.
    sub_step(0.25, "the sub-step's map")
    assert seen == pytest.approx([0.2, 0.4, 0.6, 0.6, 0.2, 0.3])


def test_scaled_nests_and_takes_none_as_it_comes():
    seen = []
    # The second half of the work, and the first half of that: a quarter of the work, from half-way.
    scaled(scaled(seen.append, 0.5, 1.0), 0.0, 0.5)(0.5)
    assert seen == pytest.approx([0.625])
    assert scaled(None, 0.0, 1.0) is None


@pytest.mark.parametrize("start, end", [(0.6, 0.2), (-0.1, 0.5), (0.5, 1.5)])
def test_scaled_refuses_a_part_outside_the_work(start, end):
    with pytest.raises(ValueError, match=rf"start, end: expected 0 <= start <= end <= 1, got {start} and {end}"):
        scaled(print, start, end)


def test_a_stopped_task_raises_the_protocols_exception():
    assert tasks.Cancelled is Cancelled
    reported = []
    task = tasks.Task(lambda task: None, lambda result: None, reported.append)
    task.checkpoint(0.5)
    task.cancel()
    with pytest.raises(Cancelled):
        task.checkpoint(0.75)
    assert reported == [0.5]
