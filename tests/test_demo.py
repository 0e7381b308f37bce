"""The embedded default: real pretrained networks on real bundled pictures, offline."""

import numpy as np
import pytest
import torch

from cnnviz_widgets import demo


@pytest.fixture(scope="module")
def imagenet():
    return demo.imagenet_model()


def top_class(imagenet, photo) -> str:
    model, preprocess, class_names = imagenet
    with torch.no_grad():
        return class_names[model(preprocess(photo)).argmax(1).item()]


def test_imagenet_model_has_the_1000_imagenet_classes(imagenet):
    model, preprocess, class_names = imagenet
    assert len(class_names) == 1000
    assert class_names[285] == "Egyptian cat" and class_names[967] == "espresso"
    assert not model.training
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_preprocess_gives_a_normalised_224_crop():
    picture = np.full((300, 451, 3), 255, dtype=np.uint8)
    picture[:, :, 2] = 0
    x = demo.imagenet_preprocess(picture)
    assert x.shape == (1, 3, 224, 224)
    # (255/255 - 0.5) / 0.5 = 1 and (0 - 0.5) / 0.5 = -1
    assert torch.allclose(x[0, 0], torch.ones(224, 224)) and torch.allclose(x[0, 2], -torch.ones(224, 224))


def test_preprocess_rejects_what_is_not_a_picture():
    with pytest.raises(TypeError, match="image: expected a PIL image"):
        demo.imagenet_preprocess("chelsea.png")


@pytest.mark.parametrize(
    ("photo", "expected"),
    [
        ("chelsea", {"Egyptian cat", "tabby", "tiger cat"}),
        ("coffee", {"espresso"}),
        ("motorcycle", {"moped", "motor scooter"}),
        ("camera", {"tripod"}),
    ],
)
def test_pretrained_model_recognises_the_bundled_photos(imagenet, photo, expected):
    assert top_class(imagenet, demo.photos()[photo]) in expected


def test_photos_are_rgb_pictures():
    photos = demo.photos()
    assert {"chelsea", "coffee", "astronaut", "rocket"} <= set(photos)
    assert all(p.mode == "RGB" and min(p.size) >= 300 for p in photos.values())


def test_digits_split_is_fixed_disjoint_and_complete():
    x_train, y_train, names = demo.digits("train")
    x_test, y_test, _ = demo.digits("test")
    assert names == [str(d) for d in range(10)]
    assert x_train.shape[1:] == (1, 32, 32) and x_test.shape[1:] == (1, 32, 32)
    assert len(y_train) + len(y_test) == 1797  # every image of scikit-learn's set, each in one split
    assert 0.0 <= x_test.min() and x_test.max() <= 1.0
    assert torch.equal(demo.digits("test")[0], x_test)
    train_rows = {tuple(row) for row in x_train.flatten(1).numpy().round(4)}
    assert not any(tuple(row) in train_rows for row in x_test.flatten(1).numpy().round(4))
    assert set(y_test.tolist()) == set(range(10))


def test_digits_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="split: expected 'train' or 'test', got 'validation'"):
        demo.digits("validation")


def test_digits_model_reaches_97_percent_on_the_test_split():
    x, y, _ = demo.digits("test")
    model = demo.digits_model()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.97


def test_digits_model_is_small_and_deep_enough_to_look_inside():
    model = demo.digits_model()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3
    weights = sum(p.numel() for p in model.parameters())
    assert weights * 4 < 1_000_000


def test_digit_pictures_round_trip_through_digits_preprocess():
    x, _, _ = demo.digits("test")
    pictures = demo.digit_pictures(x[:5])
    assert pictures[0].dtype == np.uint8 and pictures[0].shape == (32, 32)
    back = torch.cat([demo.digits_preprocess(p) for p in pictures])
    assert torch.allclose(back, x[:5], atol=1 / 255)
