"""ComparePanel on a vision transformer: the attention maps get their cards, with deletion and insertion scores."""

from __future__ import annotations

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

import cnnviz_widgets as cw
from cnnviz_widgets import render
from cnnviz_widgets.methods import ATTENTION_EXPLANATIONS, EXPLANATIONS
from tests.model_state import ModelState
from panel_support import digits, panel_of, pixels, settled  # noqa: F401 - digits is a fixture


def test_a_vision_transformer_gets_the_attention_cards_scored(digits):
    _, pictures, labels, names = digits
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2).eval()
    state = ModelState(model)
    panel = settled(panel_of(cw.ComparePanel, (model, pictures, labels, names)), timeout=240)
    assert list(panel.cards) == [item.name for item in EXPLANATIONS + ATTENTION_EXPLANATIONS]
    x = cw.demo.digits_preprocess(pictures[0])
    for name, method in (("attention-rollout", "rollout"), ("chefer", "chefer")):
        importance = cw.attention(model, x, panel.target, method=method)
        scores = cw.deletion_insertion(model, x, panel.target, importance)
        _, picture, curves, text = panel.cards[name]
        np.testing.assert_array_equal(pixels(picture.value), render.overlay(panel.session.view(0), importance, alpha=0.5, cmap="jet"))
        assert f"deletion AUC <b>{scores.deletion_auc:.3f}</b>" in text.value
        assert f"insertion AUC <b>{scores.insertion_auc:.3f}</b>" in text.value
        assert pixels(curves.value).std() > 1
    state.assert_unchanged()

