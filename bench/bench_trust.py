"""The trust tools on the demo model: the CAM family against pytorch-grad-cam, faithfulness curves, a sanity check.

Run with ``.venv/bin/python bench/bench_trust.py``. EfficientNet-Lite0 (pretrained) on the chelsea photo at
224 px, class "Egyptian cat", layer ``_conv_head`` (Score-CAM: ``_blocks.15``, see ``SCORE_CAM_LAYER``). Prints
markdown tables:

- each CAM method, ours (the map resized to the input, as pytorch-grad-cam returns it) against the
  pytorch-grad-cam class that computes the same map, best of several runs, and the two maps' correlation;
- deletion and insertion curves of 50 steps for the Grad-CAM map, batch sizes side by side;
- the full cascading randomisation of Grad-CAM and of guided backprop;
- the Compare panel on the photos, from its first request: the time until its first map, until every map
  but Score-CAM's, until Score-CAM's, and until every map's deletion and insertion scores are shown, at its
  default layer; and the least time Score-CAM can take there: one forward pass per channel, at the fast
  copy's best batched throughput measured in the same run.
"""

from __future__ import annotations

import copy
import os
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM draws a progress bar per image

import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import cnnviz_widgets as cw
from bench_methods import best_times
from cnnviz_widgets.fast import fast_copy
from cnnviz_widgets.replica import borrow

TARGET = 285  # Egyptian cat
LAYER = "_conv_head"
SCORE_CAM_LAYER = "_blocks.15"
"""Score-CAM masks the image with each of the layer's maps and weighs them by a softmax of the masked images'
scores, which lands on a few channels. On the raw outputs of ``_conv_head`` and of the head's batch norm
those channels are negative where the others are not, and both libraries' maps are all zeros; the head's
ReLU6 (``_swish``) is a module the stem calls too, which pytorch-grad-cam's hooks cannot tell apart. The
last block's 320 maps give a map, and its Score-CAM runs 320 forward passes rather than 1,280."""
ORACLES = {
    "grad-cam": GradCAM,
    "grad-cam++": GradCAMPlusPlus,
    "xgrad-cam": XGradCAM,
    "layer-cam": LayerCAM,
    "hires-cam": HiResCAM,
    "score-cam": ScoreCAM,
    "eigen-cam": EigenCAM,
}
RUNS = {"score-cam": 3}
DEFAULT_RUNS = 10
FAITHFULNESS_STEPS = 50
FAITHFULNESS_BATCH_SIZES = (4, 16)
FAITHFULNESS_RUNS = 3
FORWARD_RUNS = 5


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def cam_rows(model, x):
    for method, oracle_class in ORACLES.items():
        layer = SCORE_CAM_LAYER if method == "score-cam" else LAYER
        # pytorch-grad-cam hooks the model it is given for the life of its object: give it its own copy.
        twin = copy.deepcopy(model)
        last = {}
        with oracle_class(model=twin, target_layers=[twin.get_submodule(layer)]) as oracle:

            def ours():
                last["ours"] = cw.cam(model, x, layer, TARGET, method)

            def theirs():
                last["theirs"] = torch.from_numpy(oracle(input_tensor=x[None], targets=[ClassifierOutputTarget(TARGET)])[0])

            times = best_times({"ours": ours, "pytorch-grad-cam": theirs}, RUNS.get(method, DEFAULT_RUNS))
        yield method, layer, times["ours"], times["pytorch-grad-cam"], correlation(last["ours"], last["theirs"])


def main():
    warnings.filterwarnings("ignore")
    model, preprocess, class_names = cw.demo.imagenet_model()
    x = preprocess(cw.demo.photos()["chelsea"])[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; EfficientNet-Lite0, chelsea at 224 px, "
          f"class {TARGET} ({class_names[TARGET]}), layer {LAYER}\n")

    print("| CAM method | layer | ours (ms) | pytorch-grad-cam (ms) | pytorch-grad-cam / ours | correlation |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for method, layer, ours, theirs, r in cam_rows(model, x):
        print(f"| {method} | {layer} | {ours * 1000:.0f} | {theirs * 1000:.0f} | {theirs / ours:.2f}x | {r:.5f} |", flush=True)
    print("\nScore-CAM: best of 3 runs, 320 channels (one forward pass each); Eigen-CAM: pytorch-grad-cam's "
          "component sign is LAPACK's, ours rises with the total activation (a correlation near -1 is that sign).")

    cam = cw.grad_cam(model, x, LAYER, TARGET)
    print(f"\nDeletion and insertion of the Grad-CAM map, {FAITHFULNESS_STEPS} steps "
          f"({2 * (FAITHFULNESS_STEPS + 1)} images), blurred baseline, best of {FAITHFULNESS_RUNS}\n")
    print("| batch size | time (ms) | deletion AUC | insertion AUC |")
    print("| ---: | ---: | ---: | ---: |")
    results = {}
    times = best_times(
        {
            size: lambda size=size: results.__setitem__(
                size, cw.deletion_insertion(model, x, TARGET, cam, FAITHFULNESS_STEPS, batch_size=size)
            )
            for size in FAITHFULNESS_BATCH_SIZES
        },
        FAITHFULNESS_RUNS,
    )
    for size in FAITHFULNESS_BATCH_SIZES:
        result = results[size]
        print(f"| {size} | {times[size] * 1000:.0f} | {result.deletion_auc:.4f} | {result.insertion_auc:.4f} |", flush=True)

    print("\nCascading randomisation, every parameterised layer from the logits down\n")
    print("| method | steps | time (s) | rank correlation after _fc, _bn1, _conv_head | after the whole cascade "
          "| SSIM after _conv_head |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for method in ("grad-cam", "guided-backprop"):
        start = time.perf_counter()
        result = cw.sanity_check(model, x, TARGET, method)
        elapsed = time.perf_counter() - start
        top = ", ".join(f"{value:.3f}" for value in result.rank_correlations[:3].tolist())
        print(f"| {method} | {len(result.layers)} | {elapsed:.1f} | {top} | {float(result.rank_correlations[-1]):.3f} "
              f"| {float(result.ssim[2]):.3f} |", flush=True)

    maps, scores, layer = compare_times(model, preprocess, class_names)
    others = max(seconds for name, seconds in maps.items() if name != "score-cam")
    channels = cw.feature_maps(model, x, layer).shape[0]
    floor = channels * best_forward_seconds(model, x)
    print(f"\nCompare panel, a new photo, CAM layer {layer}: first map {min(maps.values()):.2f} s, every map but "
          f"Score-CAM {others:.1f} s, Score-CAM {maps['score-cam']:.1f} s, every score {max(scores.values()):.1f} s. "
          f"Score-CAM at {layer} is {channels} forward passes: {floor:.1f} s at the fast copy's best batched "
          "throughput on this machine, measured in this run.", flush=True)


def best_forward_seconds(model, x) -> float:
    """Seconds per image of the fast copy's fastest batched forward pass (batches of 1 to 16, both memory formats)."""
    with borrow(model) as replica, torch.no_grad():
        per_image = []
        for size in (1, 4, 16):
            batch = x.expand(size, *x.shape)
            fast = fast_copy(replica, batch)
            for memory_format in fast.memory_formats:
                laid_out = batch.contiguous(memory_format=memory_format)
                seconds = best_times({"forward": lambda: fast.module(laid_out)}, FORWARD_RUNS)["forward"]
                per_image.append(seconds / size)
    return min(per_image)


def compare_times(model, preprocess, class_names) -> tuple[dict, dict, str]:
    """Seconds from a Compare panel's request to each method's map and to each method's scores."""
    pictures = list(cw.demo.photos().values())
    panel = cw.ComparePanel(model, pictures, preprocess=preprocess, class_names=class_names)
    assert panel.wait(600)
    maps, scored = {}, {}
    for name, (_, picture, _, text) in panel.cards.items():
        picture.observe(lambda change, name=name: maps.setdefault(name, time.perf_counter()), "value")
        text.observe(
            lambda change, name=name: scored.setdefault(name, time.perf_counter())
            if "AUC" in change["new"] or "zero" in change["new"] else None,
            "value",
        )
    start = time.perf_counter()
    panel.image = 1
    assert panel.wait(600)
    layer = panel.layer
    panel.close()
    return ({name: t - start for name, t in maps.items()}, {name: t - start for name, t in scored.items()}, layer)


if __name__ == "__main__":
    main()
