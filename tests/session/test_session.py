"""Session: the picture shown is the crop the model reads; inputs of any kind; caches that follow the weights."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import cnnviz_widgets as cw
from cnnviz_widgets.session import Session, input_crop_box, normalization_of


def tiny_classifier(classes: int = 4) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, classes, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


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
    session = Session(tiny_classifier(), [wide], preprocess=preprocess)
    view = session.view(0)
    assert view.shape == (224, 224, 3)
    # The centre crop of a picture whose middle third is white is all white, but for the blended edges.
    assert view[:, 4:-4].min() == 255


def test_a_tensor_of_inputs_is_used_as_is_and_shown_scaled():
    x, y, names = cw.demo.digits("test")
    session = Session(cw.demo.digits_model(), x[:3], class_names=names, labels=y[:3])
    assert torch.equal(session.input(1), x[1:2])
    assert session.view(1).shape == (32, 32, 3)
    assert session.ranked_classes(1)[0][0] == int(cw.demo.digits_model()(x[1:2]).argmax())


def test_bad_images_and_labels_are_refused_with_a_clear_message():
    model = cw.demo.digits_model()
    with pytest.raises(TypeError, match="images"):
        Session(model, 42)
    with pytest.raises(ValueError, match="labels: 2 labels for 3 images"):
        Session(model, [np.zeros((32, 32), np.uint8)] * 3, labels=[1, 2])
    with pytest.raises(TypeError, match="model"):
        Session("resnet", [Image.new("RGB", (8, 8))])
    with pytest.raises(ValueError, match="preprocess: the default preprocessing .* makes 3-channel inputs, but DigitsCNN reads 1-channel"):
        Session(model, [np.zeros((32, 32), np.uint8)])
    with pytest.raises(ValueError, match="out of range"):
        Session(model, [np.zeros((32, 32), np.uint8)], preprocess=cw.demo.digits_preprocess).input(3)


def test_a_pipeline_the_crop_measurement_cannot_read_gets_the_whole_picture():
    def refuses_pictures(picture):
        raise RuntimeError("this pipeline reads files, not pictures")

    assert input_crop_box(refuses_pictures, (80, 60)) == (0.0, 0.0, 80.0, 60.0)
    assert input_crop_box(lambda picture: torch.zeros(1, 3, 8, 8), (80, 60)) == (0.0, 0.0, 80.0, 60.0)


def test_the_normalisation_is_read_off_the_preprocessing():
    mean, std = (0.2, 0.5, 0.7), (0.3, 0.25, 0.5)
    preprocess = torchvision.transforms.Compose(
        [torchvision.transforms.ToTensor(), torchvision.transforms.Normalize(mean, std)]
    )
    found_mean, found_std = normalization_of(preprocess)
    assert found_mean == pytest.approx(mean, abs=1e-5)
    assert found_std == pytest.approx(std, abs=1e-5)
    inverted = torchvision.transforms.Compose([torchvision.transforms.ToTensor(), lambda x: 1 - x])
    found_mean, found_std = normalization_of(inverted)
    assert found_mean == pytest.approx((1.0,) * 3) and found_std == pytest.approx((-1.0,) * 3)
    constant = torchvision.transforms.Compose([torchvision.transforms.ToTensor(), lambda x: x * 0])
    assert normalization_of(constant) is None


def test_class_names_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match="class_names: 3 names given, but the model outputs 4 classes"):
        Session(tiny_classifier(4), [np.zeros((8, 8, 3), np.uint8)], class_names=["a", "b", "c"])
    with pytest.raises(TypeError, match="class_names: expected a list of 4 names"):
        Session(tiny_classifier(4), [np.zeros((8, 8, 3), np.uint8)], class_names="abcd")


def test_new_weights_start_a_generation_and_are_never_served_from_the_cache():
    model = tiny_classifier(4)
    picture = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    session = Session(model, [picture])
    before = session.probabilities(0)
    assert session.generation == 0 and not session.sync()
    with torch.no_grad():
        model[0].bias += torch.tensor([5.0, 0.0, 0.0, 0.0])
    after = session.probabilities(0)
    with torch.no_grad():
        expected = torch.softmax(model(session.input(0)).double(), dim=1)[0].numpy()
    assert session.generation == 1
    assert np.allclose(after, expected) and not np.allclose(after, before)
