"""ModelContext: the picture shown is the crop the model reads; inputs of any accepted kind."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import cnnviz_widgets as cw
from cnnviz_widgets.widgets.context import ModelContext, input_crop_box


def test_the_crop_box_of_resize_and_centre_crop_is_measured():
    preprocess = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    left, top, right, bottom = input_crop_box(preprocess, (400, 300))
    # Short side 300 -> 256, centre 224: the model reads the middle 262.5 px of the short side.
    side = 300 * 224 / 256
    assert left == pytest.approx(200 - side / 2, abs=2)
    assert right == pytest.approx(200 + side / 2, abs=2)
    assert top == pytest.approx(150 - side / 2, abs=2)
    assert bottom == pytest.approx(150 + side / 2, abs=2)


def test_the_view_is_the_models_crop_at_the_input_size():
    _, preprocess, _ = cw.demo.imagenet_model()
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255
    context = ModelContext(torch.nn.Conv2d(3, 4, 3), [wide], preprocess=preprocess)
    view = context.view(0)
    assert view.shape == (224, 224, 3)
    # The centre crop of a picture whose middle third is white is all white, but for the blended edges.
    assert view[:, 4:-4].min() == 255


def test_a_tensor_of_inputs_is_used_as_is_and_shown_scaled():
    x, y, names = cw.demo.digits("test")
    context = ModelContext(cw.demo.digits_model(), x[:3], class_names=names, labels=y[:3])
    assert torch.equal(context.input(1), x[1:2])
    assert context.view(1).shape == (32, 32, 3)
    assert context.ranked_classes(1)[0][0] == int(cw.demo.digits_model()(x[1:2]).argmax())


def test_bad_images_and_labels_are_refused_with_a_clear_message():
    model = cw.demo.digits_model()
    with pytest.raises(TypeError, match="images"):
        ModelContext(model, 42)
    with pytest.raises(ValueError, match="labels: 2 labels for 3 images"):
        ModelContext(model, [np.zeros((32, 32), np.uint8)] * 3, labels=[1, 2])
    with pytest.raises(TypeError, match="model"):
        ModelContext("resnet", [Image.new("RGB", (8, 8))])
    with pytest.raises(ValueError, match="out of range"):
        ModelContext(model, [np.zeros((32, 32), np.uint8)]).input(3)
