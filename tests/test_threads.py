"""Threads: the fast paths never change the thread count other threads take, and results do not depend on
which call came first.

torch keeps one process-wide thread count that each new thread takes at its first torch call; setting it
anywhere (``torch.set_num_threads``) changes it for every thread started afterwards. A panel's worker
started while the tuner tried one thread would keep one thread for life.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
import torch
import torchvision

import cnnviz_widgets as cw
from cnnviz_widgets import fast
from cnnviz_widgets.replica import borrow


def count_of_a_new_thread() -> int:
    counts = []
    thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return counts[0]


def test_threads_started_during_and_after_the_fast_paths_take_the_default_count():
    default = count_of_a_new_thread()
    assert default == fast.DEFAULT_THREADS > 1, "the machine runs torch on several threads, or nothing is tested"
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    generator = torch.Generator().manual_seed(0)
    pictures = [torch.randn(3, 64, 64, generator=generator) for _ in range(3)]
    images = torch.randn(48, 3, 64, 64, generator=generator)
    counts, stop = [], threading.Event()

    def start_threads():
        while not stop.is_set():
            counts.append(count_of_a_new_thread())

    starter = threading.Thread(target=start_threads)
    starter.start()
    try:
        for picture in pictures:
            cw.occlusion(model, picture, 1, window=8, stride=4)
        cw.evaluate(model, images, torch.arange(48) % 10, batch_size=4, progress=False)
    finally:
        stop.set()
        starter.join()
    counts.append(count_of_a_new_thread())
    with borrow(model) as replica:
        tried = [setting for chooser in fast._TUNERS[replica].values() for setting, times in chooser.times.items() if times]
    assert {setting.threads for setting in tried} == {1, default}, "the tuner measured both thread counts"
    assert len(counts) > 100
    assert set(counts) == {default}


def test_one_thread_work_runs_on_one_thread_in_the_callers_gradient_mode():
    assert fast.on_threads(1, torch.get_num_threads) == 1
    assert fast.on_threads(fast.DEFAULT_THREADS, torch.get_num_threads) == fast.DEFAULT_THREADS
    with torch.no_grad():
        assert fast.on_threads(1, torch.is_grad_enabled) is False
    with torch.inference_mode():
        assert fast.on_threads(1, torch.is_inference_mode_enabled) is True
    assert fast.on_threads(1, torch.is_grad_enabled) is True
    assert count_of_a_new_thread() == fast.DEFAULT_THREADS


RUN_IN_ORDER = textwrap.dedent(
    """
    import sys, threading
    import torch, torchvision
    import cnnviz_widgets as cw

    order, path = sys.argv[1].split(","), sys.argv[2]
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 96, 96, generator=generator)
    images = torch.randn(24, 3, 96, 96, generator=generator)
    calls = {
        "occlusion": lambda: cw.occlusion(model, x, 3, window=16, stride=8).scores,
        "grad_cam": lambda: cw.grad_cam(model, x, "layer4", 3, raw=True),
        "evaluate": lambda: torch.as_tensor(
            cw.evaluate(model, images, torch.arange(24) % 10, batch_size=8, progress=False).probabilities
        ),
    }
    results = {}
    for name in order:
        # Each call on a thread of its own, as a panel's worker runs it.
        worker = threading.Thread(target=lambda name=name: results.update({name: calls[name]()}))
        worker.start()
        worker.join()
    torch.save(results, path)
    """
)


@pytest.mark.slow
def test_results_do_not_depend_on_which_call_came_first(tmp_path):
    orders = ["occlusion,grad_cam,evaluate", "evaluate,grad_cam,occlusion"]
    results = []
    for index, order in enumerate(orders):
        path = tmp_path / f"order{index}.pt"
        subprocess.run([sys.executable, "-c", RUN_IN_ORDER, order, str(path)], check=True, timeout=600)
        results.append(torch.load(path))
    first, second = results
    assert set(first) == set(second) == {"occlusion", "grad_cam", "evaluate"}
    for name, expected in first.items():
        scale = float(expected.abs().max())
        assert scale > 0
        torch.testing.assert_close(second[name], expected, rtol=0, atol=1e-6 * scale, msg=name)
