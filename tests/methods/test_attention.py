"""Attention rollout and Chefer's map against direct computations written here, on timm, torchvision and Hugging
Face vision transformers at random weights.

The attention weights of the oracles come from the libraries themselves: timm's non-fused path hands them to
``attn_drop``, torch's ``nn.MultiheadAttention`` returns them with ``need_weights=True``, and Hugging Face's
eager attention returns them with ``output_attentions=True``.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.models.vision_transformer import VisionTransformer
from transformers import ViTConfig, ViTForImageClassification

import cnnviz_widgets as cw
from cnnviz_widgets.methods import deletion_insertion, explanation, explanations_for
from tests.model_state import ModelState


def image(channels: int = 3, side: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(channels, side, side, generator=torch.Generator().manual_seed(seed))


def timm_vit(name: str = "vit_tiny_patch16_224", **settings) -> torch.nn.Module:
    """The timm model at 64 px (a 4 x 4 patch grid) with three of its twelve blocks: fast, and still a product."""
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=64, num_classes=10, depth=3, **settings).eval()


def torchvision_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()
    # torchvision starts the head at zero: no class would send a gradient back, as after training.
    torch.nn.init.normal_(model.heads.head.weight, std=0.2)
    return model


def hugging_face_vit(implementation: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=10, attn_implementation=implementation,
    )
    return ViTForImageClassification(config).eval()


def timm_weights(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's softmax weights ``(heads, T, T)``, as timm's own non-fused attention computes them."""
    blocks = [block.attn for block in model.blocks]
    fused = [attention.fused_attn for attention in blocks]
    seen = []
    handles = [attention.attn_drop.register_forward_hook(lambda m, args, out: seen.append(out[0])) for attention in blocks]
    try:
        for attention in blocks:
            attention.fused_attn = False
        with torch.no_grad():
            model(x[None])
    finally:
        for handle in handles:
            handle.remove()
        for attention, flag in zip(blocks, fused):
            attention.fused_attn = flag
    return seen


def torchvision_weights(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Each encoder block's weights per head, from ``nn.MultiheadAttention`` itself (``need_weights=True``)."""
    inputs = []
    layers = list(model.encoder.layers)
    handles = [layer.self_attention.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for layer in layers]
    try:
        with torch.no_grad():
            model(x[None])
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        return [
            layer.self_attention(y, y, y, need_weights=True, average_attn_weights=False)[1][0]
            for layer, y in zip(layers, inputs)
        ]


def hugging_face_weights(model, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [weights[0] for weights in model(x[None], output_attentions=True).attentions]


def direct_rollout(weights, fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Abnar and Zuidema's rollout, written out: head-fused attention plus the identity, rows normalised, multiplied."""
    tokens = weights[0].shape[-1]
    product = torch.eye(tokens, dtype=torch.float64)
    for block in weights:
        block = block.double()
        fused = {"mean": block.mean(0), "max": block.max(0).values, "min": block.min(0).values}[fusion]
        if discard_ratio:
            # vit-explain's rule: the lowest weights of the whole matrix go, the class token's own attention stays.
            flat = fused.flatten().clone()
            lowest = flat.argsort()[: int(flat.numel() * discard_ratio)]
            flat[lowest[lowest != 0]] = 0
            fused = flat.view(tokens, tokens)
        layer = fused + torch.eye(tokens, dtype=torch.float64)
        layer = layer / layer.sum(dim=1, keepdim=True)
        product = layer @ product
    return product


def as_map(product: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The class token's row over the last ``h * w`` tokens, resized bilinearly to ``size``, min-max scaled."""
    row = product.detach()[0, -grid[0] * grid[1] :].reshape(1, 1, *grid).float()
    resized = F.interpolate(row, size=size, mode="bilinear", align_corners=False)[0, 0]
    return (resized - resized.min()) / (resized.max() - resized.min())


def assert_maps_equal(ours: torch.Tensor, reference: torch.Tensor, atol: float = 1e-4) -> None:
    assert ours.shape == reference.shape
    assert ours.min() >= 0 and ours.max() == pytest.approx(1.0)
    difference = float((ours - reference).abs().max())
    assert difference <= atol, f"largest difference {difference:.3g}"


@pytest.mark.parametrize(
    "name, settings, grid",
    [
        ("vit_tiny_patch16_224", {}, (4, 4)),
        ("deit_tiny_distilled_patch16_224", {}, (4, 4)),
        ("vit_tiny_patch16_224", {"reg_tokens": 4}, (4, 4)),
    ],
    ids=["vit", "deit-distilled", "registers"],
)
def test_rollout_equals_the_direct_computation_on_timm(name, settings, grid):
    model = timm_vit(name, **settings)
    x = image(side=64)
    state = ModelState(model)
    ours = cw.attention(model, x)
    state.assert_unchanged()
    weights = timm_weights(model, x)
    assert weights[0].shape[-1] == model.num_prefix_tokens + 16
    assert_maps_equal(ours, as_map(direct_rollout(weights), grid, (64, 64)))


def test_rollout_equals_the_direct_computation_on_torchvision_and_hugging_face():
    x = image()
    model = torchvision_vit()
    state = ModelState(model)
    ours = cw.attention(model, x)
    state.assert_unchanged()
    assert_maps_equal(ours, as_map(direct_rollout(torchvision_weights(model, x)), (4, 4), (32, 32)))

    model = hugging_face_vit()
    eager = hugging_face_vit("eager")
    assert all(torch.equal(a, b) for a, b in zip(eager.state_dict().values(), model.state_dict().values()))
    state = ModelState(model)
    ours = cw.attention(model, x)
    state.assert_unchanged()
    assert_maps_equal(ours, as_map(direct_rollout(hugging_face_weights(eager, x)), (4, 4), (32, 32)))


@pytest.mark.parametrize("fusion, discard_ratio", [("max", 0.0), ("min", 0.0), ("mean", 0.9)])
def test_head_fusion_and_discarding_follow_the_direct_computation(fusion, discard_ratio):
    model = timm_vit()
    x = image(side=64)
    ours = cw.attention(model, x, 3, head_fusion=fusion, discard_ratio=discard_ratio)
    reference = as_map(direct_rollout(timm_weights(model, x), fusion, discard_ratio), (4, 4), (64, 64))
    assert_maps_equal(ours, reference)


def test_a_non_square_grid_and_the_fused_kernel_give_the_same_maps():
    model = timm_vit(dynamic_img_size=True)
    x = torch.randn(3, 48, 80, generator=torch.Generator().manual_seed(2))
    maps = {}
    for fused in (True, False):
        for block in model.blocks:
            block.attn.fused_attn = fused
        maps[fused] = [cw.attention(model, x, method=method, target=2) for method in ("rollout", "chefer")]
    assert maps[True][0].shape == (48, 80)
    for with_fused, without in zip(maps[True], maps[False]):
        assert float((with_fused - without).abs().max()) <= 1e-5
    assert_maps_equal(maps[True][0], as_map(direct_rollout(timm_weights(model, x)), (3, 5), (48, 80)))


class TwoBlocks:
    """Chefer, Gur and Wolf's rule for self-attention, written out on a two-block timm ViT: its forward pass
    by hand from the weights, the attention computed explicitly, its gradients by autograd."""

    def __init__(self, model: VisionTransformer):
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        m = self.model
        patches = F.conv2d(x[None], m.patch_embed.proj.weight, m.patch_embed.proj.bias, stride=m.patch_embed.proj.stride)
        tokens = torch.cat([m.cls_token, patches.flatten(2).transpose(1, 2)], dim=1) + m.pos_embed
        attentions = []
        for block in m.blocks:
            heads, width = block.attn.num_heads, tokens.shape[-1]
            normed = F.layer_norm(tokens, (width,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
            q, k, v = (normed @ block.attn.qkv.weight.T + block.attn.qkv.bias).reshape(1, -1, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-2, -1) / (width // heads) ** 0.5, dim=-1)
            attentions.append(attention)
            mixed = (attention @ v).transpose(1, 2).reshape(1, -1, width)
            tokens = tokens + mixed @ block.attn.proj.weight.T + block.attn.proj.bias
            normed = F.layer_norm(tokens, (width,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
            hidden = F.gelu(normed @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
            tokens = tokens + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
        final = F.layer_norm(tokens[:, 0], (tokens.shape[-1],), m.norm.weight, m.norm.bias, m.norm.eps)
        return final @ m.head.weight.T + m.head.bias, attentions

    def relevance_map(self, x: torch.Tensor, target: int) -> torch.Tensor:
        logits, attentions = self.forward(x)
        gradients = torch.autograd.grad(logits[0, target], attentions)
        relevance = torch.eye(attentions[0].shape[-1], dtype=torch.float64)
        for attention, gradient in zip(attentions, gradients):
            weighted = (gradient[0] * attention[0]).clamp(min=0).mean(dim=0).double()
            relevance = relevance + weighted @ relevance
        return relevance


def tiny_vit(**settings) -> VisionTransformer:
    torch.manual_seed(3)
    return VisionTransformer(img_size=32, patch_size=8, num_classes=5, embed_dim=16, depth=2, num_heads=2, **settings).eval()


def test_chefer_equals_the_papers_equations_on_a_two_block_model():
    model = tiny_vit()
    x = image(seed=4)
    oracle = TwoBlocks(model)
    with torch.no_grad():
        assert torch.allclose(oracle.forward(x)[0], model(x[None]), atol=1e-5), "the hand-written forward is the model's"
    state = ModelState(model)
    for target in (0, 3):
        ours = cw.attention(model, x, target, method="chefer")
        state.assert_unchanged()
        assert_maps_equal(ours, as_map(oracle.relevance_map(x, target), (4, 4), (32, 32)))
    predicted = int(model(x[None]).argmax())
    assert torch.equal(cw.attention(model, x, method="chefer"), cw.attention(model, x, predicted, method="chefer"))
    assert not torch.equal(cw.attention(model, x, 0, method="chefer"), cw.attention(model, x, 3, method="chefer"))
    assert torch.equal(cw.attention(model, x, 0), cw.attention(model, x, 3)), "rollout is the same for every class"


def test_chefer_works_on_every_library():
    for model, side in ((torchvision_vit(), 32), (hugging_face_vit(), 32), (timm_vit("deit_tiny_distilled_patch16_224"), 64)):
        picture = image(side=side)
        state = ModelState(model)
        ours = cw.attention(model, picture, 1, method="chefer")
        state.assert_unchanged()
        assert ours.shape == picture.shape[-2:] and ours.min() >= 0 and ours.max() == pytest.approx(1.0)


def test_models_without_readable_attention_get_a_value_error():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"^model: ResNet has no self-attention"):
        cw.attention(torchvision.models.resnet18(weights=None, num_classes=10), image())
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=56, window_size=7, depths=(1, 1, 1, 1), num_classes=10
    )
    with pytest.raises(ValueError, match=r"^model: .*windowed attention has no CLS row to roll out"):
        cw.attention(swin, image(side=56))
    assert explanations_for(swin) == cw.methods.EXPLANATIONS
    pooled = tiny_vit(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match=r"^model: its attention sees 16 tokens for a 4 x 4 patch grid: no class token"):
        cw.attention(pooled, image())
    biased = torchvision_vit()
    # Learnt key and value tokens appended to the sequence: weights this module cannot recompute.
    biased.encoder.layers[1].self_attention = torch.nn.MultiheadAttention(32, 2, batch_first=True, add_bias_kv=True)
    state = ModelState(biased)
    with pytest.raises(ValueError, match=r"^model: the attention of encoder.layers.encoder_layer_1.self_attention .* cannot be recomputed"):
        cw.attention(biased, image(), method="chefer", target=0)
    state.assert_unchanged()


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"method": "raw"}, ValueError, r"^method: expected one of rollout, chefer; got 'raw'"),
        ({"head_fusion": "median"}, ValueError, r"^head_fusion: expected one of mean, max, min"),
        ({"discard_ratio": 1.0}, ValueError, r"^discard_ratio: expected a fraction in \[0, 1\), got 1.0"),
        ({"method": "chefer", "head_fusion": "max"}, ValueError, r"^head_fusion: Chefer's map averages the heads"),
        ({"target": 2.5}, TypeError, r"^target"),
        ({"method": "chefer", "target": 7}, ValueError, r"^target: class index 7 is out of range"),
    ],
)
def test_bad_arguments_are_named(arguments, error, message):
    with pytest.raises(error, match=message):
        cw.attention(tiny_vit(), image(), **arguments)


def test_compare_lists_and_scores_the_attention_maps_for_transformers_only():
    model = tiny_vit()
    x = image(seed=5)
    names = [item.name for item in explanations_for(model)]
    assert names[-2:] == ["attention-rollout", "chefer"]
    assert "chefer" not in [item.name for item in explanations_for(torchvision.models.resnet18(weights=None))]
    state = ModelState(model)
    for name, method in (("attention-rollout", "rollout"), ("chefer", "chefer")):
        importance = explanation(model, x, None, 2, name)
        assert torch.equal(importance, cw.attention(model, x, 2, method=method))
        scores = deletion_insertion(model, x, 2, importance)
        assert 0 <= scores.deletion_auc <= 1 and 0 <= scores.insertion_auc <= 1
    state.assert_unchanged()


def test_the_sanity_cascade_says_rollout_does_not_depend_on_the_head():
    model = tiny_vit()
    x = image(seed=6)
    state = ModelState(model)
    result = cw.sanity_check(model, x, 1, "attention-rollout", max_steps=4)
    state.assert_unchanged()
    assert result.layers[0] == "head"
    assert torch.equal(result.maps[0], result.original)
    verdict = cw.sanity_verdict(result)
    assert verdict.same_without_head
    assert "does not depend on the classification head" in verdict.reason
    chefer = cw.sanity_verdict(cw.sanity_check(model, x, 1, "chefer", max_steps=1))
    assert not chefer.same_without_head


def test_chefers_map_changes_once_the_head_is_randomised_and_rollouts_does_not():
    """On the bundled digits ViT (torchvision's, four blocks, 98% on the test digits)."""
    x, y, _ = cw.demo.digits("test")
    vit = cw.demo.digits_vit()
    inputs = x.repeat(1, 3, 1, 1)
    state = ModelState(vit)
    correlations = []
    for picture, label in zip(inputs[:20], y[:20]):
        result = cw.sanity_check(vit, picture, int(label), "chefer", max_steps=1)
        assert result.layers == ["heads.head"]
        correlations.append(float(result.rank_correlations[0]))
    # Measured: a mean of 0.33 over these 20 digits (from -0.16 to 0.84; median 0.38).
    assert sum(correlations) / len(correlations) < 0.5
    for picture, label in zip(inputs[:3], y[:3]):
        rollout = cw.sanity_check(vit, picture, int(label), "attention-rollout", max_steps=2)
        assert torch.equal(rollout.maps[0], rollout.original)
        assert rollout.rank_correlations[0] == pytest.approx(1.0)
        assert cw.sanity_verdict(rollout).same_without_head
    state.assert_unchanged()
