"""Where a vision transformer's class token looks: attention rollout and Chefer's gradient-weighted attention.

- rollout (Abnar and Zuidema 2020, "Quantifying attention flow in transformers"): each block's attention,
  its heads fused, plus the identity for the residual connection, rows renormalised, multiplied through the
  blocks. It reads no gradient: the same map for every class.
- chefer (Chefer, Gur and Wolf, ICCV 2021, "Generic attention-model explainability for interpreting bi-modal
  and encoder-decoder transformers", the rule for self-attention): ``R = I``, then for each block
  ``R <- R + A_bar R`` with ``A_bar = E_h[(grad A * A)+]``, the attention weighted by the target logit's
  gradient at it, its negative parts dropped, averaged over the heads.

The map is the class token's row of the product over the patch tokens, laid on the patch grid.

Torch's fused ``scaled_dot_product_attention`` (timm's ``fused_attn``, torchvision's and Hugging Face's
attention) returns no weights, so the weights are recomputed from each attention module's input with the
module's own projections, and the module's output is recomputed from them: the network goes on with the
recomputed output (the same values), so the gradient at the weights is the logit's own. A module whose
recomputed output differs from its own is not read silently: it gets a ValueError.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..inputs import check_image, check_int, check_model, check_target
from ..layers import prefix_tokens
from ..outputs import check_output, logits_of
from ..probe import probe
from ..replica import borrow
from .grad_cam import upsample_to

ATTENTION_METHODS = ("rollout", "chefer")
HEAD_FUSIONS = ("mean", "max", "min")
WINDOWED = "windowed attention has no CLS row to roll out"
RECOMPUTED_TOLERANCE = 1e-4
"""How far, relative to its largest value, a recomputed attention output may differ from the module's own:
float rounding between a fused kernel and explicit products stays below 1e-6 in float32."""


@dataclass
class Projections:
    """One call of an attention module, seen through its projections.

    q, k, v: ``(N, heads, T, d)``; scale: the factor of ``q k^T`` before the softmax; finish: the heads'
    weighted values ``(N, heads, T, d)`` -> the module's output tensor.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    scale: float
    finish: Callable[[Tensor], Tensor]


def _heads(values: Tensor, heads: int) -> Tensor:
    batch, tokens, _ = values.shape
    return values.reshape(batch, tokens, heads, -1).transpose(1, 2)


def _merged(context: Tensor) -> Tensor:
    batch, _, tokens, _ = context.shape
    return context.transpose(1, 2).reshape(batch, tokens, -1)


def _argument(args: tuple, kwargs: dict, position: int, name: str):
    return args[position] if len(args) > position else kwargs.get(name)


def _timm(module: nn.Module, args: tuple, kwargs: dict) -> Projections:
    """timm's ``Attention`` (ViT, DeiT, register tokens): one ``qkv`` linear, optional q/k norms and gate."""
    x = _argument(args, kwargs, 0, "x")
    q, k, v = _heads(module.qkv(x), 3 * module.num_heads).chunk(3, dim=1)
    gate = getattr(module, "gate", None)

    def finish(context: Tensor) -> Tensor:
        merged = getattr(module, "norm", nn.Identity())(_merged(context))
        if gate is not None:
            merged = merged * gate(x).sigmoid()
        return module.proj_drop(module.proj(merged))

    return Projections(module.q_norm(q), module.k_norm(k), v, module.scale, finish)


def _multihead(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> Projections:
    """``nn.MultiheadAttention`` attending over its own input (torchvision's ViT encoder blocks)."""
    query, key, value = (_argument(args, kwargs, i, name) for i, name in enumerate(("query", "key", "value")))
    if not (query is key is value):
        raise ValueError(f"model: {type(module).__name__} attends to other tokens than its query's (cross-attention)")
    x = query if module.batch_first else query.transpose(0, 1)
    if module._qkv_same_embed_dim:
        weights = module.in_proj_weight.chunk(3)
    else:
        weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
    biases = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None,) * 3
    q, k, v = (_heads(nn.functional.linear(x, w, b), module.num_heads) for w, b in zip(weights, biases))

    def finish(context: Tensor) -> Tensor:
        out = module.out_proj(_merged(context))
        return out if module.batch_first else out.transpose(0, 1)

    return Projections(q, k, v, 1 / math.sqrt(module.head_dim), finish)


def _hugging_face(module: nn.Module, args: tuple, kwargs: dict) -> Projections:
    """Hugging Face's ViT attention: ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (transformers 5), or
    ``query``/``key``/``value`` whose merged heads are the output (``ViTSelfAttention`` before it)."""
    x = _argument(args, kwargs, 0, "hidden_states")
    if hasattr(module, "q_proj"):
        heads = module.num_attention_heads
        q, k, v = (_heads(projection(x), heads) for projection in (module.q_proj, module.k_proj, module.v_proj))
        return Projections(q, k, v, module.scaling, lambda context: module.o_proj(_merged(context)))
    heads = module.num_attention_heads
    q, k, v = (_heads(projection(x), heads) for projection in (module.query, module.key, module.value))
    return Projections(q, k, v, 1 / math.sqrt(module.attention_head_size), _merged)


def _linear(module: nn.Module, *names: str) -> bool:
    return all(isinstance(getattr(module, name, None), nn.Linear) for name in names)


def _windowed(module: nn.Module) -> bool:
    # By name: BEiT's global attention has a window_size too (of its relative position bias).
    name = type(module).__name__
    return "Attention" in name and ("Window" in name or "Swin" in name)


def projections_reader(module: nn.Module) -> Callable[[nn.Module, tuple, dict], Projections] | None:
    """How to read the attention of ``module`` from its input, or None when it is not a global self-attention
    this module can recompute."""
    if _windowed(module):
        return None
    if isinstance(module, nn.MultiheadAttention):
        return _multihead
    if _linear(module, "qkv", "proj") and hasattr(module, "num_heads") and hasattr(module, "scale"):
        return _timm
    if _linear(module, "q_proj", "k_proj", "v_proj", "o_proj") and hasattr(module, "num_attention_heads"):
        return _hugging_face
    if _linear(module, "query", "key", "value") and hasattr(module, "attention_head_size"):
        return _hugging_face
    return None


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's global self-attention modules whose weights :func:`attention` can recompute."""
    return [(name, module) for name, module in model.named_modules() if projections_reader(module) is not None]


def has_attention(model: nn.Module) -> bool:
    """Whether :func:`attention` can read ``model``'s attention (the Compare view lists its methods then): global
    self-attention it can recompute, and a class token whose row the maps read (MobileViT's attention runs
    within patches, with no class token)."""
    return bool(attention_modules(model)) and bool(prefix_tokens(model))


def check_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    modules = attention_modules(model)
    if modules:
        return modules
    windowed = [name for name, module in model.named_modules() if _windowed(module)]
    if windowed:
        raise ValueError(
            f"model: {type(model).__name__} attends within windows ({windowed[0]}, ...): {WINDOWED}; "
            "take Grad-CAM at one of its blocks"
        )
    raise ValueError(
        f"model: {type(model).__name__} has no self-attention module whose weights can be read (timm's Attention, "
        "nn.MultiheadAttention, Hugging Face's ViT attention): attention maps are for vision transformers"
    )


@dataclass
class AttentionPass:
    """One forward pass seen through the attention: each block's weights ``(1, heads, T, T)`` in call order
    (in the graph of the logits when the pass was differentiable), the logits, and the patch grid."""

    weights: list[Tensor]
    logits: Tensor
    grid: tuple[int, int]


def attention_pass(
    replica: nn.Module, image: Tensor, modules: list[tuple[str, nn.Module]], output, differentiable: bool
) -> AttentionPass:
    """Run ``image`` through ``replica``, recomputing each attention module's weights (see the module docstring).

    The patch grid is the output of the last conv layer called before the first attention (the patch
    embedding), so non-square grids and any number of prefix tokens (class, distillation, registers) are read.
    """
    names = {module: name for name, module in modules}
    weights: list[Tensor] = []
    grids: list[tuple[int, int]] = []

    def recompute(module, args, kwargs, original):
        seen = original[0] if isinstance(original, tuple) else original
        parts = projections_reader(module)(module, args, kwargs)
        if parts.q.shape[0] != image.shape[0]:
            raise ValueError(
                f"model: {names[module]} attends within {parts.q.shape[0]} separate token sets for one picture: {WINDOWED}"
            )
        attention = torch.softmax((parts.q * parts.scale) @ parts.k.transpose(-2, -1), dim=-1)
        if differentiable and not attention.requires_grad:
            attention.requires_grad_(True)
        recomputed = parts.finish(attention @ parts.v)
        spread = float(seen.detach().abs().max())
        difference = float((recomputed.detach() - seen.detach()).abs().max())
        if recomputed.shape != seen.shape or difference > RECOMPUTED_TOLERANCE * max(spread, 1.0):
            raise ValueError(
                f"model: the attention of {names[module]} ({type(module).__name__}) cannot be recomputed from its "
                f"projections (an attention mask, a position bias or another variant: its output differs by {difference:.3g})"
            )
        weights.append(attention)
        # The module's own values, with the recomputed output's graph: the logits stay exactly the model's.
        rewired = seen.detach() + (recomputed - recomputed.detach())
        return (rewired, *original[1:]) if isinstance(original, tuple) else rewired

    def patch_grid(module, args, kwargs, result):
        if not weights and isinstance(result, Tensor) and result.dim() == 4:
            grids.append(tuple(result.shape[-2:]))

    convolutions = [(module, patch_grid) for module in replica.modules() if isinstance(module, nn.Conv2d)]
    with probe(replica, differentiable=differentiable, rewrite=[*convolutions, *((m, recompute) for _, m in modules)]) as capture:
        logits = logits_of(capture.run(image), output)
    if not weights:
        raise ValueError(f"model: the forward pass of {type(replica).__name__} called none of its attention modules")
    tokens = weights[0].shape[-1]
    if any(block.shape[-1] != tokens for block in weights):
        raise ValueError(f"model: the attention blocks of {type(replica).__name__} see different numbers of tokens")
    if not grids:
        raise ValueError(
            f"model: {type(replica).__name__} has no patch embedding (a conv layer before the first attention) to lay the tokens on a grid"
        )
    grid = grids[-1]
    prefix = tokens - grid[0] * grid[1]
    if prefix < 1:
        raise ValueError(
            f"model: its attention sees {tokens} tokens for a {grid[0]} x {grid[1]} patch grid: no class token ahead "
            "of the patches, so no class token's row to read"
        )
    return AttentionPass(weights, logits, grid)


def fused_heads(weights: Tensor, head_fusion: str) -> Tensor:
    """``(heads, T, T)`` -> ``(T, T)``: the heads' mean, maximum or minimum."""
    if head_fusion == "mean":
        return weights.mean(dim=0)
    if head_fusion == "max":
        return weights.amax(dim=0)
    return weights.amin(dim=0)


def discarded(fused: Tensor, ratio: float) -> Tensor:
    """``fused`` with its lowest ``ratio`` of weights set to zero, except the class token's attention to itself."""
    count = int(fused.numel() * ratio)
    if not count:
        return fused
    flat = fused.flatten().clone()
    lowest = flat.topk(count, largest=False).indices
    flat[lowest[lowest != 0]] = 0
    return flat.view_as(fused)


def rollout(weights: list[Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
    """Abnar and Zuidema's rollout of the blocks' ``(heads, T, T)`` weights: ``(T, T)``."""
    tokens = weights[0].shape[-1]
    identity = torch.eye(tokens, dtype=weights[0].dtype, device=weights[0].device)
    product = identity
    for block in weights:
        mixed = discarded(fused_heads(block, head_fusion), discard_ratio) + identity
        product = (mixed / mixed.sum(dim=-1, keepdim=True)) @ product
    return product


def chefer_relevance(weights: list[Tensor], gradients: list[Tensor]) -> Tensor:
    """Chefer, Gur and Wolf's relevance ``(T, T)`` from the blocks' weights and the target's gradients at them."""
    tokens = weights[0].shape[-1]
    relevance = torch.eye(tokens, dtype=weights[0].dtype, device=weights[0].device)
    for block, gradient in zip(weights, gradients):
        weighted = (gradient * block).clamp(min=0).mean(dim=0)
        relevance = relevance + weighted @ relevance
    return relevance


def attention(
    model: nn.Module,
    x: Tensor,
    target=None,
    method: str = "rollout",
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    output=None,
) -> Tensor:
    """The class token's attention map of a vision transformer for the image ``x``: ``(H, W)`` at the input's
    size on the CPU, resized bilinearly from the patch grid and min-max scaled to [0, 1] as ``grad_cam``'s maps.

    method: "rollout" (Abnar and Zuidema 2020) or "chefer" (Chefer, Gur and Wolf 2021); see the module's docstring.
    target: the class Chefer's map explains (by default the predicted class). Rollout reads no gradient: it is
        the same map for every class, and ``target`` (None or a class index) is ignored.
    head_fusion: rollout's fusion of the heads, "mean", "max" or "min"; Chefer's map averages them (the paper's E_h).
    discard_ratio: rollout drops this fraction of each block's fused weights, the lowest, before adding the
        identity (the class token's attention to itself is kept), in [0, 1).
    output: a callable from the model's output to its logits.

    Reads timm's ``Attention`` (ViT, DeiT, register tokens), ``nn.MultiheadAttention`` (torchvision's ViT) and
    Hugging Face's ViT attention; a model without them (a CNN, Swin's windowed attention) gets a ValueError.
    """
    check_model(model)
    output = check_output(output)
    if not isinstance(method, str) or method not in ATTENTION_METHODS:
        raise ValueError(f"method: expected one of {', '.join(ATTENTION_METHODS)}; got {method!r}")
    if not isinstance(head_fusion, str) or head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion: expected one of {', '.join(HEAD_FUSIONS)}; got {head_fusion!r}")
    if (
        isinstance(discard_ratio, bool)
        or not isinstance(discard_ratio, numbers.Real)
        or not 0 <= discard_ratio < 1
    ):
        raise ValueError(f"discard_ratio: expected a fraction in [0, 1), got {discard_ratio!r}")
    if method == "chefer" and (head_fusion != "mean" or discard_ratio):
        raise ValueError(
            f"head_fusion: Chefer's map averages the heads and keeps every weight; head_fusion and discard_ratio "
            f"are rollout's (got head_fusion={head_fusion!r}, discard_ratio={discard_ratio!r})"
        )
    if target is not None and method == "rollout":
        check_int(target, "target")
    with borrow(model) as replica:
        image = check_image(replica, x)
        seen = attention_pass(replica, image, check_attention_modules(replica), output, method == "chefer")
        if method == "rollout":
            product = rollout([block[0].detach() for block in seen.weights], head_fusion, float(discard_ratio))
        else:
            index = check_target(seen.logits.argmax(dim=1)[0] if target is None else target, seen.logits.shape[1])
            gradients = torch.autograd.grad(seen.logits[0, index], seen.weights, allow_unused=True)
            gradients = [torch.zeros_like(w) if g is None else g for w, g in zip(seen.weights, gradients)]
            product = chefer_relevance([block[0].detach() for block in seen.weights], [g[0] for g in gradients])
    prefix = product.shape[-1] - seen.grid[0] * seen.grid[1]
    row = product[0, prefix:].reshape(seen.grid)
    return upsample_to(row.detach(), image.shape[-2:]).cpu()
