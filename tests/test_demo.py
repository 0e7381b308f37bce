"""The embedded default: real pretrained networks on real bundled pictures, offline."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import cnnviz_widgets as cw
from cnnviz_widgets import demo
from tests.model_state import ModelState

TRAINING_SCRIPT = Path(__file__).parents[1] / "scripts" / "train_digits.py"


@pytest.fixture(scope="module")
def imagenet():
    return demo.imagenet_model()


def top_class(imagenet, photo) -> str:
    model, preprocess, class_names = imagenet
    with torch.no_grad():
        return class_names[model(preprocess(photo)).argmax(1).item()]


def test_imagenet_model_has_the_1000_imagenet_classes(imagenet):
    model, _preprocess, class_names = imagenet
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


@pytest.fixture(scope="module")
def train_digits():
    spec = importlib.util.spec_from_file_location("train_digits", TRAINING_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def accuracy_on(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_digits_model_reaches_97_percent_on_the_test_split():
    x, y, _ = demo.digits("test")
    assert accuracy_on(demo.digits_model(), x, y) >= 0.97


def test_early_checkpoint_is_clearly_worse_yet_a_real_classifier():
    x, y, _ = demo.digits("test")
    early = accuracy_on(demo.digits_model(demo.EARLY_DIGITS_EPOCHS), x, y)
    final = accuracy_on(demo.digits_model(demo.DIGITS_EPOCHS), x, y)
    # Measured on the 450 test digits: 423 right (94.0%) after 5 epochs, 448 (99.6%) after 30.
    assert 0.88 <= early <= 0.97
    assert final >= 0.99
    assert final - early >= 0.03


def test_unshipped_epoch_count_is_refused_with_the_shipped_ones():
    with pytest.raises(ValueError, match=r"^epochs: no digits CNN checkpoint for 7 epochs; shipped: \[5, 30\]"):
        demo.digits_model(7)
    for epochs in ("30", 5.0, True):
        with pytest.raises(ValueError, match=f"^epochs: no digits CNN checkpoint for {epochs!r} epochs"):
            demo.digits_model(epochs)


def test_training_rejects_a_count_that_is_not_a_positive_int(train_digits):
    for epochs in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"^epochs: expected a positive int, got {epochs!r}"):
            train_digits.train(epochs)


def assert_same_weights(model, reference):
    trained, shipped = model.state_dict(), reference.state_dict()
    assert trained.keys() == shipped.keys()
    for name, tensor in trained.items():
        torch.testing.assert_close(tensor, shipped[name], rtol=0, atol=1e-6, msg=name)


def test_training_script_reproduces_the_shipped_early_checkpoint(train_digits):
    threads = torch.get_num_threads()
    random_state = torch.get_rng_state()
    model = train_digits.train(demo.EARLY_DIGITS_EPOCHS)
    # Training runs on one thread from its own seed, and gives the caller's settings back.
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), random_state)
    assert not model.training
    assert_same_weights(model, demo.digits_model(demo.EARLY_DIGITS_EPOCHS))


@pytest.mark.slow
def test_training_script_reproduces_the_shipped_final_checkpoint(train_digits):
    assert_same_weights(train_digits.train(demo.DIGITS_EPOCHS), demo.digits_model())


def test_early_and_final_checkpoints_flip_both_ways():
    x, labels, names = demo.digits("test")
    pictures = demo.digit_pictures(x)
    early, final = demo.digits_model(demo.EARLY_DIGITS_EPOCHS), demo.digits_model()
    diff = cw.model_diff(
        early, final, pictures, labels, preprocess=demo.digits_preprocess, class_names=names, cache=False
    )
    inputs = torch.cat([demo.digits_preprocess(picture) for picture in pictures])
    with torch.no_grad():
        right_early = early(inputs).argmax(1) == labels
        right_final = final(inputs).argmax(1) == labels
    newly_wrong = set(torch.nonzero(right_early & ~right_final).flatten().tolist())
    newly_right = set(torch.nonzero(~right_early & right_final).flatten().tolist())
    kinds = diff.flips.groupby("kind")["index"].apply(set).to_dict()
    assert newly_wrong and newly_right
    assert kinds.get("newly_wrong", set()) == newly_wrong
    assert kinds.get("newly_right", set()) == newly_right


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


def test_the_digits_vit_reads_the_digits_it_was_trained_on():
    x, y, _ = cw.demo.digits("test")
    vit = cw.demo.digits_vit()
    state = ModelState(vit)
    pictures = cw.demo.digit_pictures(x[:3])
    inputs = torch.cat([cw.demo.digits_vit_preprocess(picture) for picture in pictures])
    assert inputs.shape == (3, 3, 32, 32)
    # Each channel is the digit the CNN reads.
    torch.testing.assert_close(inputs[:, 1:2], torch.cat([cw.demo.digits_preprocess(picture) for picture in pictures]))
    with torch.no_grad():
        accuracy = (vit(x.repeat(1, 3, 1, 1)).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.97
    assert isinstance(vit, torchvision.models.VisionTransformer) and not vit.training
    state.assert_unchanged()
