"""explore(): tabs share one image, class and layer; a point or a gallery picture selects the image everywhere."""

import numpy as np
import torch
import torchvision

import cnnviz_widgets as cw
from tests.model_state import ModelState
from panel_support import pixels, settled
from test_mistakes_panel import confused_digits


def test_selecting_a_point_or_a_mistake_makes_it_the_current_image_everywhere():
    model, pictures, labels, names = confused_digits()
    state = ModelState(model)
    dashboard = cw.explore(model, pictures, labels=labels, class_names=names, preprocess=cw.demo.digits_preprocess)
    assert list(dashboard.panels) == ["Mistakes", "Diagnose", "Projector", "Grad-CAM", "Feature maps", "Filters", "Occlusion", "Guided backprop", "Compare"]
    settled(dashboard)
    dashboard.tabs.selected_index = list(dashboard.panels).index("Projector")
    settled(dashboard)
    projector = dashboard.panels["Projector"]
    projector.scatter.selected = [17]
    settled(dashboard)
    assert all(panel.image == 17 for panel in dashboard.panels.values())
    dashboard.tabs.selected_index = list(dashboard.panels).index("Grad-CAM")
    settled(dashboard)
    grad_cam = dashboard.grad_cam
    x = cw.demo.digits_preprocess(pictures[17])
    predicted = int(model(x).argmax())
    assert grad_cam.target == predicted == dashboard.panels["Occlusion"].target
    expected = cw.render.overlay(grad_cam.session.view(17), cw.grad_cam(model, x, "features.conv3", predicted), alpha=0.5, cmap="jet")
    np.testing.assert_array_equal(pixels(grad_cam.left.value), expected)
    assert "current image <b>17</b>" in dashboard.current.value

    mistakes = dashboard.panels["Mistakes"]
    dashboard.tabs.selected_index = 0
    settled(dashboard)
    mistakes.slots[1].pointer = {"x": 0.5, "y": 0.5, "kind": "press", "serial": 1}
    settled(dashboard)
    chosen = int(mistakes._shown[1])
    assert dashboard.image == chosen and grad_cam.image == chosen

    # A cell (true A, predicted B): its first image, and Grad-CAM's "why B rather than A".
    true, predicted = int(mistakes.evaluation.labels[chosen]), int(mistakes.evaluation.predictions[chosen])
    mistakes.matrix.selection = (true, predicted)
    settled(dashboard)
    first = int(mistakes.shown[0])
    assert dashboard.image == first and grad_cam.image == first
    assert (grad_cam.target, grad_cam.second_target, grad_cam.contrastive) == (predicted, true, True)
    dashboard.tabs.selected_index = list(dashboard.panels).index("Grad-CAM")
    settled(dashboard)
    assert f"why {names[predicted]} rather than {names[true]}" in grad_cam.right_label.value

    # The heatmaps share their layer; feature maps and filters keep the first layer, where they teach most.
    grad_cam.layer = "features.conv2"
    assert dashboard.panels["Guided backprop"].layer == "features.conv2" == dashboard.panels["Compare"].layer
    assert dashboard.panels["Feature maps"].layer == "features.conv1" == dashboard.panels["Filters"].layer
    settled(dashboard)
    state.assert_unchanged()


def test_hidden_tabs_put_long_work_off_until_shown():
    model, pictures, labels, names = confused_digits()
    dashboard = cw.explore(model, pictures, labels=labels, class_names=names, preprocess=cw.demo.digits_preprocess)
    settled(dashboard)
    occlusion = dashboard.panels["Occlusion"]
    assert occlusion.scores_view.value == b""
    dashboard.tabs.selected_index = list(dashboard.panels).index("Occlusion")
    settled(dashboard)
    assert pixels(occlusion.scores_view.value).std() > 0


def test_works_on_a_torchvision_model_with_its_weights_transforms(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    preprocess = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    photos = {name: picture for name, picture in list(cw.demo.photos().items())[:2]}
    state = ModelState(model)
    dashboard = cw.explore(model, photos, preprocess=preprocess)
    assert "Mistakes" not in dashboard.panels
    dashboard.tabs.selected_index = list(dashboard.panels).index("Grad-CAM")
    settled(dashboard)
    grad_cam = dashboard.grad_cam
    assert grad_cam.layer == "layer4.1.conv2"
    assert grad_cam.error == ""
    # The overlay is drawn on the 224 px centre crop the transforms hand the model, not on the whole photo.
    assert pixels(grad_cam.left.value).shape == (224, 224, 3)
    assert len(grad_cam.class_chooser.options) == 1000
    state.assert_unchanged()


def test_a_vision_transformer_dashboard_lists_its_blocks_and_each_tab_keeps_its_own_layer():
    x, y, names = cw.demo.digits("test")
    vit = cw.demo.digits_vit()
    state = ModelState(vit)
    dashboard = cw.explore(vit, cw.demo.digit_pictures(x[:12]), y[:12], names, cw.demo.digits_vit_preprocess, cache=False)
    try:
        blocks = [f"encoder.layers.encoder_layer_{block}" for block in range(4)]
        listed = [name for name, _ in dashboard.session.conv_layers()]
        assert listed == ["conv_proj"] + [name for block in blocks for name in (f"{block}.ln_1", block)]
        # The CAM family's default: the last block's first norm (the last block's patch tokens get no
        # gradient from the class token's head).
        assert dashboard.layer == "encoder.layers.encoder_layer_3.ln_1"
        filters, feature_maps = dashboard.panels["Filters"], dashboard.panels["Feature maps"]
        assert [value for _, value in filters.layer_chooser.options] == ["conv_proj"]
        dashboard.layer = "encoder.layers.encoder_layer_1.ln_1"
        assert dashboard.panels["Grad-CAM"].layer == dashboard.panels["Compare"].layer == "encoder.layers.encoder_layer_1.ln_1"
        # Feature maps and Filters open on the first layer and stay there: the heatmaps' layer is not theirs.
        assert feature_maps.layer == filters.layer == "conv_proj"
        feature_maps.layer = "encoder.layers.encoder_layer_1"
        dashboard.tabs.selected_index = list(dashboard.panels).index("Feature maps")
        assert dashboard.wait(120) and feature_maps.error == ""
        assert pixels(feature_maps.grid.value).std() > 10
        filters.layer_chooser.value = "conv_proj"
        for index in range(len(dashboard.panels)):
            dashboard.tabs.selected_index = index
            assert dashboard.wait(300)
        assert all(panel.error == "" for panel in dashboard.panels.values()), {t: p.error[:200] for t, p in dashboard.panels.items() if p.error}
    finally:
        dashboard.close()
    state.assert_unchanged()
