"""Explanation methods side by side with the reference libraries, in one process.

Run with ``make bench`` (or ``.venv/bin/python bench/bench_methods.py``; ``--first-batch-check`` runs only the
last measurement below). Prints two markdown tables:
for each model at 224 px, the best of several runs of our Grad-CAM (the raw map, as Captum's) and guided
backprop next to Captum's and pytorch-grad-cam's, and the fast copy's forward pass alone (the floor of any Grad-CAM); then exact occlusion at two window settings next to
Captum's ``Occlusion`` at its fastest ``perturbations_per_eval`` (picked in a first trial), with the largest
difference between the two attributions on softmax outputs. Then the time of 8 filter patterns at 128 px,
and the memory (RSS) growth over 300 rounds of grad_cam + guided_backprop + feature_maps. Last, the cost of
the incremental engine's first-batch check (4 positions of the first batch of a new shape, in each memory
format, also run as whole passes) on a window 32, stride 8 map of a demo photo on EfficientNet-Lite0, as a
fraction of the map.

ResNet18 and VGG16 use random weights (speed does not depend on them); EfficientNet-Lite0 is the demo
model with its pretrained weights.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import os
import time
import warnings
from contextlib import contextmanager

import torch
import torchvision
from captum.attr import GuidedBackprop, LayerGradCam, Occlusion
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import cnnviz_widgets as cw
from cnnviz_widgets import fast
from cnnviz_widgets.fast import fast_copy
from cnnviz_widgets.methods import incremental
from cnnviz_widgets.methods.incremental import FullRecompute
from cnnviz_widgets.replica import borrow

SIZE = 224
TARGET = 1
GRADIENT_RUNS = 15
OCCLUSION_SETTINGS = ((32, 8, 2), (56, 28, 4))
"""(window, stride, runs): the fine map (625 positions) is timed fewer times, being long (VGG16: minutes)."""
CAPTUM_PERTURBATIONS = (4, 8, 16, 32, 49)
OCCLUSION_SETTLING_POSITIONS = 512
"""Patch positions ours runs before it is timed: its first batches measure the memory format, batch size
and threads on the work itself (then kept for the model), as a user's first maps do: 8 settings (2 memory
formats, 2 batch sizes, 1 or 2 threads) tried twice, 384 positions, plus the short last batch of each map."""
MEMORY_ROUNDS = 300
CHECK_RUNS = 3
CHECK_WINDOW, CHECK_STRIDE = 32, 8
PATTERN_FILTERS, PATTERN_SIZE = 8, 128


def best_times(functions: dict, runs: int) -> dict:
    """Seconds of the fastest of ``runs`` calls of each function, after one warm-up call each.

    The calls take turns, in an order that rotates every round, so that a burst of load from other
    processes, or the thread pool a contender leaves spinning, hits every contender alike.
    """
    times = {name: [] for name in functions}
    for function in functions.values():
        function()
    names = list(functions)
    for round_index in range(runs):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def models():
    torch.manual_seed(0)
    efficientnet, _, _ = cw.demo.imagenet_model()
    return [
        ("ResNet18", torchvision.models.resnet18(weights=None).eval(), "layer4"),
        ("EfficientNet-Lite0", efficientnet, "_conv_head"),
        ("VGG16", torchvision.models.vgg16(weights=None).eval(), "features.28"),
    ]


def grad_cam_row(model, layer, x):
    module = dict(model.named_modules())[layer]
    captum = LayerGradCam(model, module)
    # pytorch-grad-cam keeps its hooks on the model for the life of the object: give it its own copy so
    # its hooks do not run (and cost) during the other contenders' calls.
    twin = copy.deepcopy(model)
    with borrow(model) as replica, torch.no_grad():
        fast = fast_copy(replica, x.unsqueeze(0)).module

    def forward(memory_format):
        with torch.no_grad():
            fast(x.unsqueeze(0).contiguous(memory_format=memory_format))

    forwards = {
        f"forward {memory_format}": functools.partial(forward, memory_format)
        for memory_format in (torch.contiguous_format, torch.channels_last)
    }
    with GradCAM(model=twin, target_layers=[dict(twin.named_modules())[layer]]) as cam:
        times = best_times(
            {
                "ours": lambda: cw.grad_cam(model, x, layer, TARGET, raw=True),
                "captum": lambda: captum.attribute(x.unsqueeze(0), target=TARGET, relu_attributions=True),
                "pytorch-grad-cam": lambda: cam(input_tensor=x.unsqueeze(0), targets=[ClassifierOutputTarget(TARGET)]),
                **forwards,
            },
            GRADIENT_RUNS,
        )
    return times["ours"], times["captum"], times["pytorch-grad-cam"], min(times[name] for name in forwards)


def guided_backprop_row(model, x):
    captum = GuidedBackprop(model)
    times = best_times(
        {
            "ours": lambda: cw.guided_backprop(model, x, TARGET),
            "captum": lambda: captum.attribute(x.unsqueeze(0).clone().requires_grad_(True), target=TARGET),
        },
        GRADIENT_RUNS,
    )
    return times["ours"], times["captum"]


def captum_occlusion(model, x, window: int, stride: int, perturbations: int):
    """Captum's Occlusion on softmax outputs, as ``cw.occlusion``'s ``attribution`` is defined: ``(H, W)``."""
    with torch.no_grad():
        return Occlusion(lambda batch: torch.softmax(model(batch), dim=1)).attribute(
            x.unsqueeze(0),
            sliding_window_shapes=(x.shape[0], window, window),
            strides=(x.shape[0], stride, stride),
            target=TARGET,
            baselines=0.0,
            perturbations_per_eval=perturbations,
        )[0, 0]


def occlusion_rows(model, x):
    """(window, stride, ours, Captum, Captum's perturbations_per_eval, max abs difference) per setting."""
    # Captum's time per occluded image depends on its batch, not on the window: its fastest batch is picked
    # on the coarse map, then Captum and ours are timed on equal terms (taking the minimum over every
    # batch's runs would hand Captum more draws at a quiet moment of the machine).
    coarse_window, coarse_stride, _ = OCCLUSION_SETTINGS[-1]
    trial = best_times(
        {p: lambda p=p: captum_occlusion(model, x, coarse_window, coarse_stride, p) for p in CAPTUM_PERTURBATIONS}, 1
    )
    perturbations = min(trial, key=trial.get)
    rows = []
    for window, stride, runs in OCCLUSION_SETTINGS:
        last = {}

        def ours():
            last["ours"] = cw.occlusion(model, x, TARGET, window=window, stride=stride).attribution

        def captum():
            last["captum"] = captum_occlusion(model, x, window, stride, perturbations)

        positions = (-(-(SIZE - window) // stride) + 1) ** 2
        for _ in range(-(-OCCLUSION_SETTLING_POSITIONS // positions)):
            ours()
        times = best_times({"ours": ours, "captum": captum}, runs)
        difference = float((last["ours"] - last["captum"]).abs().max())
        rows.append((window, stride, times["ours"], times["captum"], perturbations, difference))
    return rows


class FirstMap(Exception):
    """Raised from the checkpoint once the coarse map is there: the rest of the run is not timed."""


def coarse_map_seconds(model, x, window: int, stride: int, runs: int) -> float:
    """Best time from the call to the first coarse map a panel draws (``checkpoint``'s first partial)."""

    def first_map(fraction, partial=None):
        if partial is not None:
            raise FirstMap

    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        try:
            cw.occlusion(model, x, TARGET, window=window, stride=stride, checkpoint=first_map)
        except FirstMap:
            times.append(time.perf_counter() - start)
    return min(times[1:])


def rss_mib() -> float:
    with open("/proc/self/statm") as stream:
        pages = int(stream.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_growth(model, layer, x) -> float:
    def one_round():
        cw.grad_cam(model, x, layer, TARGET)
        cw.guided_backprop(model, x, TARGET)
        cw.feature_maps(model, x, layer)

    for _ in range(3):
        one_round()
    gc.collect()
    before = rss_mib()
    for _ in range(MEMORY_ROUNDS):
        one_round()
    gc.collect()
    return rss_mib() - before


@contextmanager
def whole_pass_seconds():
    """The seconds of every whole-pass batch run inside the block, listed as they end."""
    seconds = []
    run = FullRecompute.__call__

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return run(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    FullRecompute.__call__ = timed
    try:
        yield seconds
    finally:
        FullRecompute.__call__ = run


def first_batch_check(model, x, target: int) -> list[tuple[str, float, float, int]]:
    """(map, check seconds, map seconds, positions checked): the check's whole passes against the time of the
    map that ran them, for a user's first map of this window (the tuner trying its settings, every memory
    format checked) and for a map once the tuner has settled (one memory format), the engine's verdicts
    forgotten before each map so that it checks again. Of ``CHECK_RUNS`` maps of each kind, the one with
    the median fraction: a burst of load from other work can land on the check or on the rest of the map."""

    def one_map():
        incremental._VERDICTS.clear()
        with whole_pass_seconds() as seconds:
            start = time.perf_counter()
            cw.occlusion(model, x, target, window=CHECK_WINDOW, stride=CHECK_STRIDE)
            total = time.perf_counter() - start
        return sum(seconds), total, len(seconds)

    def first_map():
        with borrow(model) as replica:
            fast._TUNERS.pop(replica, None)
        return one_map()

    def median(maps):
        return sorted(maps, key=lambda row: row[0] / row[1])[len(maps) // 2]

    # The fast copy of this picture's shape exists before the first map, as after any other map.
    cw.occlusion(model, x, target, window=56, stride=28)
    first = median([first_map() for _ in range(CHECK_RUNS)])
    return [("first map (tuning)", *first), ("settled map", *median([one_map() for _ in range(CHECK_RUNS)]))]


def print_first_batch_check(model):
    x = cw.demo.imagenet_preprocess(cw.demo.photos()["chelsea"])[0]
    with torch.no_grad():
        target = int(model(x[None]).argmax())
    print(f"\nFirst-batch check of the incremental engine, EfficientNet-Lite0, chelsea at {SIZE} px, window "
          f"{CHECK_WINDOW}, stride {CHECK_STRIDE}: the whole passes that check positions of the first batch of a "
          "new shape in each memory format, against the map's time\n")
    print("| map | positions checked | check (ms) | map (ms) | check / map |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, check, total, positions in first_batch_check(model, x, target):
        print(f"| {name} | {positions} | {milliseconds(check)} | {milliseconds(total)} | {check / total:.1%} |", flush=True)


def milliseconds(seconds):
    return "—" if seconds is None else f"{seconds * 1000:.0f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-batch-check", action="store_true", help="only the incremental engine's first-batch check")
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(True)
    if arguments.first_batch_check:
        print_first_batch_check(cw.demo.imagenet_model()[0])
        return
    x = torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {GRADIENT_RUNS} runs, "
          f"input {SIZE} px\n")
    print("Forward: the fast copy's forward pass alone, without autograd, in its faster memory format: no "
          "Grad-CAM can take less than one forward pass.\n")
    print("| model | method | ours (ms) | Captum (ms) | pytorch-grad-cam (ms) | ours / Captum | forward (ms) | ours / forward |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    all_models = models()
    for name, model, layer in all_models:
        ours, captum, other, forward = grad_cam_row(model, layer, x)
        print(f"| {name} | Grad-CAM | {milliseconds(ours)} | {milliseconds(captum)} | {milliseconds(other)} "
              f"| {ours / captum:.2f}x | {milliseconds(forward)} | {ours / forward:.2f}x |", flush=True)
        ours, captum = guided_backprop_row(model, x)
        print(f"| {name} | guided backprop | {milliseconds(ours)} | {milliseconds(captum)} | - | {ours / captum:.2f}x | - | - |",
              flush=True)
    print(f"\nExact occlusion, baseline 0, best of (runs) once ours settled ({OCCLUSION_SETTLING_POSITIONS} positions); Captum at "
          f"its fastest perturbations_per_eval of {CAPTUM_PERTURBATIONS}; difference: max |ours - Captum| of the "
          "attributions on softmax outputs\n")
    print("| model | window, stride (runs) | ours (ms) | Captum fastest (ms) | per eval | ours / Captum | max abs difference |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, model, _ in all_models:
        for (window, stride, ours, captum, perturbations, difference), (_, _, runs) in zip(occlusion_rows(model, x), OCCLUSION_SETTINGS):
            print(f"| {name} | {window}, {stride} ({runs}) | {milliseconds(ours)} | {milliseconds(captum)} | {perturbations} "
                  f"| {ours / captum:.2f}x | {difference:.1e} |", flush=True)
    _, efficientnet, _ = all_models[1]
    window, stride, runs = OCCLUSION_SETTINGS[0]
    print(f"\nCoarse occlusion map (4×4 places), the first picture of a window {window}, stride {stride} map on "
          f"EfficientNet-Lite0: {milliseconds(coarse_map_seconds(efficientnet, x, window, stride, GRADIENT_RUNS))} ms")
    start = time.perf_counter()
    cw.filter_patterns(efficientnet, "_blocks.10._expand_conv", list(range(PATTERN_FILTERS)), size=PATTERN_SIZE,
                       normalize=((0.5,) * 3, (0.5,) * 3))
    print(f"\nfilter_patterns: {PATTERN_FILTERS} patterns at {PATTERN_SIZE} px on EfficientNet-Lite0 "
          f"(_blocks.10._expand_conv, default steps): {time.perf_counter() - start:.1f} s")
    name, model, layer = all_models[0]
    print(f"RSS growth over {MEMORY_ROUNDS} rounds of grad_cam + guided_backprop + feature_maps ({name}, "
          f"{SIZE} px): {memory_growth(model, layer, x):.1f} MiB")
    print_first_batch_check(efficientnet)


if __name__ == "__main__":
    main()
