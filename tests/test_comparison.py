"""model_diff: what changed between two models, against a direct computation from each model's evaluation."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import cnnviz_widgets as cw
from cnnviz_widgets.session import dataset_pass
from tests.model_state import ModelState

IMAGES = 150


@pytest.fixture(scope="module")
def digits():
    x, y, names = cw.demo.digits("test")
    return cw.demo.digit_pictures(x[:IMAGES]), y[:IMAGES].numpy().astype(np.int64), names


def inputs_of(pictures, preprocess=cw.demo.digits_preprocess):
    return torch.cat([preprocess(picture) for picture in pictures])


def nudged(model, seed=0, scale=0.3):
    """A second checkpoint of the same architecture: the classifier moved by noise."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        other.classifier.weight.add_(torch.randn(other.classifier.weight.shape, generator=generator) * scale)
    return other


class SmallCNN(nn.Module):
    """Another shape of digits classifier: two conv layers, a 24-d embedding."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(8, 24, 3, stride=2, padding=1), nn.ReLU()
        )
        self.classifier = nn.Linear(24, 10)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class Rotated(nn.Module):
    """The digits CNN whose embedding is turned by an orthogonal matrix, and its classifier turned back: the
    same logits, the same cosine neighbours, other embedding coordinates."""

    def __init__(self, model, seed=0):
        super().__init__()
        self.model = copy.deepcopy(model)
        rotation, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
        self.rotate = nn.Linear(64, 64, bias=False)
        self.classifier = nn.Linear(64, 10)
        with torch.no_grad():
            self.rotate.weight.copy_(rotation.float())
            self.classifier.weight.copy_((model.classifier.weight.double() @ rotation.T).float())
            self.classifier.bias.copy_(model.classifier.bias)

    def forward(self, x):
        features = self.model.pool(self.model.features(x)).flatten(1)
        return self.classifier(self.rotate(self.model.embedding(features)))


def direct_diff(model_a, model_b, pictures, labels, preprocess_a=cw.demo.digits_preprocess, preprocess_b=cw.demo.digits_preprocess):
    """Flips, rates, per-class accuracies and the confusion delta from cw.evaluate of each model, by hand."""
    a = cw.evaluate(model_a, inputs_of(pictures, preprocess_a), labels).predictions
    b = cw.evaluate(model_b, inputs_of(pictures, preprocess_b), labels).predictions
    kinds = {}
    for index, (label, pa, pb) in enumerate(zip(labels, a, b)):
        if pa == label and pb != label:
            kinds[index] = "newly_wrong"
        elif pa != label and pb == label:
            kinds[index] = "newly_right"
        elif pa != label and pb != label and pa != pb:
            kinds[index] = "changed_wrong"
    confusion_a, confusion_b = np.zeros((10, 10), np.int64), np.zeros((10, 10), np.int64)
    np.add.at(confusion_a, (labels, a), 1)
    np.add.at(confusion_b, (labels, b), 1)
    per_class = {
        k: (np.mean(a[labels == k] == k), np.mean(b[labels == k] == k), int((labels == k).sum())) for k in range(10)
    }
    return a, b, kinds, confusion_b - confusion_a, per_class


def assert_matches_direct(diff, direct, labels):
    a, b, kinds, confusion_delta, per_class = direct
    np.testing.assert_array_equal(diff.labels, labels)
    np.testing.assert_array_equal(diff.predictions_a, a)
    np.testing.assert_array_equal(diff.predictions_b, b)
    assert dict(zip(diff.flips["index"], diff.flips["kind"].astype(str))) == kinds
    for row in diff.flips.itertuples():
        assert (row.label, row.prediction_a, row.prediction_b) == (labels[row.index], a[row.index], b[row.index])
    count = len(labels)
    assert diff.negative_flip_rate == pytest.approx(sum(kind == "newly_wrong" for kind in kinds.values()) / count)
    assert diff.positive_flip_rate == pytest.approx(sum(kind == "newly_right" for kind in kinds.values()) / count)
    assert diff.accuracy_a == pytest.approx(np.mean(a == labels))
    assert diff.accuracy_b == pytest.approx(np.mean(b == labels))
    assert diff.confusion_delta.dtype == np.int64
    np.testing.assert_array_equal(diff.confusion_delta, confusion_delta)
    for k, (accuracy_a, accuracy_b, images) in per_class.items():
        row = diff.per_class.loc[k]
        assert row["class_name"] == diff.class_names[k] and row["images"] == images
        assert row["accuracy_a"] == pytest.approx(accuracy_a) and row["accuracy_b"] == pytest.approx(accuracy_b)
        assert row["delta"] == pytest.approx(accuracy_b - accuracy_a)


def test_two_checkpoints_of_one_architecture_match_a_direct_computation_and_stay_untouched(digits):
    pictures, labels, names = digits
    model_a = cw.demo.digits_model()
    model_b = nudged(model_a)
    states = ModelState(model_a), ModelState(model_b)
    fractions = []
    diff = cw.model_diff(
        model_a, model_b, pictures, labels, cw.demo.digits_preprocess, class_names=names, cache=False,
        checkpoint=lambda fraction, partial=None: fractions.append(fraction),
    )
    for state in states:
        state.assert_unchanged()
    assert_matches_direct(diff, direct_diff(model_a, model_b, pictures, labels), labels)
    assert diff.negative_flip_rate > 0.05, "the nudge is meant to break some images"
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] == pytest.approx(1.0)
    assert any(0 < fraction < 0.5 for fraction in fractions) and any(0.5 < fraction < 1 for fraction in fractions)
    assert diff.neighbours == 10 and diff.embedding_agreement.shape == (IMAGES,)
    assert diff.class_names == names and diff.per_class["class_name"].tolist() == names


def test_a_model_trained_one_more_step_flips_images_as_a_direct_computation_says(digits):
    pictures, labels, _ = digits
    model_a = cw.demo.digits_model()
    # One SGD step on a batch of training digits, BatchNorm's statistics frozen (eval mode), as a fine-tune.
    model_b = copy.deepcopy(model_a)
    x, y, _ = cw.demo.digits("train")
    optimiser = torch.optim.SGD(model_b.parameters(), lr=0.01)
    nn.functional.cross_entropy(model_b(x[:64]), y[:64]).backward()
    optimiser.step()
    model_b.zero_grad(set_to_none=True)
    diff = cw.model_diff(model_a, model_b, pictures, labels, cw.demo.digits_preprocess, cache=False)
    assert_matches_direct(diff, direct_diff(model_a, model_b, pictures, labels), labels)
    assert 0 < len(diff.flips) < 0.2 * IMAGES


def test_a_dynamically_quantized_copy_runs_and_flips_few_images(digits):
    pictures, labels, _ = digits
    model = cw.demo.digits_model()
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    diff = cw.model_diff(model, quantized, pictures, labels, cw.demo.digits_preprocess, cache=False)
    assert_matches_direct(diff, direct_diff(model, quantized, pictures, labels), labels)
    assert len(diff.flips) <= 0.02 * IMAGES
    assert diff.embedding_agreement.mean() > 0.9
    # Both embed at their classifier's input: the float model's features up to the int8 rounding.
    inputs = inputs_of(pictures)
    np.testing.assert_allclose(cw.embed(quantized, inputs, progress=False), cw.embed(model, inputs, progress=False), atol=0.1)


def test_a_pruned_copy_matches_a_direct_computation(digits):
    pictures, labels, _ = digits
    model = cw.demo.digits_model()
    pruned = copy.deepcopy(model)
    prune.l1_unstructured(pruned.features.conv2, "weight", amount=0.5)
    assert (pruned.features.conv2.weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)
    state = ModelState(pruned)
    diff = cw.model_diff(model, pruned, pictures, labels, cw.demo.digits_preprocess, cache=False)
    state.assert_unchanged()
    assert_matches_direct(diff, direct_diff(model, pruned, pictures, labels), labels)


def test_two_architectures_compare_and_a_random_model_sees_other_neighbours(digits):
    pictures, labels, _ = digits
    model = cw.demo.digits_model()
    torch.manual_seed(0)
    other = SmallCNN().eval()
    diff = cw.model_diff(model, other, pictures, labels, cw.demo.digits_preprocess, cache=False)
    assert_matches_direct(diff, direct_diff(model, other, pictures, labels), labels)
    assert diff.embedding_agreement.mean() < 0.5


def test_a_model_against_itself_or_its_rotated_embedding_agrees_everywhere(digits):
    pictures, labels, _ = digits
    model = cw.demo.digits_model()
    itself = cw.model_diff(model, model, pictures, labels, cw.demo.digits_preprocess, cache=False)
    np.testing.assert_array_equal(itself.embedding_agreement, np.ones(IMAGES))
    assert itself.flips.empty and not itself.confusion_delta.any()
    rotated = cw.model_diff(model, Rotated(model), pictures, labels, cw.demo.digits_preprocess, cache=False)
    assert rotated.embedding_agreement.mean() > 0.99
    assert rotated.flips.empty


def test_agreement_is_the_share_of_shared_neighbours_on_a_planted_case():
    # Four images on a line in A; in B the last two swap places: image 0's nearest neighbour changes.
    a = np.array([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    from cnnviz_widgets.comparison import neighbour_agreement

    agreement = neighbour_agreement(a, b, 1)
    # A: 0->1, 1->0, 2->1, 3->2. B: 0->1, 1->0, 2->3, 3->1.
    np.testing.assert_array_equal(agreement, [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(neighbour_agreement(a, b, 3), np.ones(4))


def upsampled_preprocess(picture):
    """Model B's input: the digit at twice the size (64 px)."""
    return nn.functional.interpolate(cw.demo.digits_preprocess(picture), scale_factor=2, mode="nearest")


def test_a_preprocess_pair_feeds_each_model_its_own_input_size(digits):
    pictures, labels, _ = digits
    model = cw.demo.digits_model()
    # Averaging 2x2 blocks of a nearest-upsampled picture gives the picture back: B is A on 64 px inputs.
    reads_64 = nn.Sequential(nn.AvgPool2d(2), copy.deepcopy(model)).eval()
    diff = cw.model_diff(
        model, reads_64, pictures, labels, (cw.demo.digits_preprocess, upsampled_preprocess), cache=False
    )
    assert_matches_direct(
        diff, direct_diff(model, reads_64, pictures, labels, preprocess_b=upsampled_preprocess), labels
    )
    assert diff.flips.empty
    assert diff.embedding_agreement.mean() > 0.99


def test_a_second_diff_with_the_same_cache_folder_runs_no_pass(digits, tmp_path, monkeypatch):
    pictures, labels, _ = digits
    passes = []
    run = dataset_pass.evaluate_and_embed

    def counted(*args, **kwargs):
        passes.append(1)
        return run(*args, **kwargs)

    monkeypatch.setattr(dataset_pass, "evaluate_and_embed", counted)
    model_a = cw.demo.digits_model()
    model_b = nudged(model_a)
    first = cw.model_diff(model_a, model_b, pictures, labels, cw.demo.digits_preprocess, cache=tmp_path)
    assert len(passes) == 2
    second = cw.model_diff(
        cw.demo.digits_model(), nudged(model_a), pictures, labels, cw.demo.digits_preprocess, cache=tmp_path
    )
    assert len(passes) == 2
    np.testing.assert_array_equal(second.predictions_b, first.predictions_b)
    np.testing.assert_array_equal(second.embedding_agreement, first.embedding_agreement)


def test_labels_come_with_a_folder_of_class_subfolders(digits, tmp_path):
    from PIL import Image

    pictures, labels, names = digits
    for index, (picture, label) in enumerate(zip(pictures[:40], labels[:40])):
        folder = tmp_path / names[label]
        folder.mkdir(exist_ok=True)
        Image.fromarray(picture).save(folder / f"{index:03d}.png")
    model_a = cw.demo.digits_model()
    model_b = nudged(model_a)
    diff = cw.model_diff(model_a, model_b, tmp_path, preprocess=cw.demo.digits_preprocess, class_names=names, cache=False)
    assert sorted(diff.labels.tolist()) == sorted(labels[:40].tolist())
    assert diff.class_names == names


def test_bad_input_errors_name_the_argument(digits):
    pictures, labels, _ = digits
    model = cw.demo.digits_model()
    with pytest.raises(ValueError, match="^labels: "):
        cw.model_diff(model, model, pictures[:10], preprocess=cw.demo.digits_preprocess, cache=False)
    with pytest.raises(ValueError, match="^model_b: outputs 3 classes"):
        three = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 3))
        cw.model_diff(model, three, pictures[:10], labels[:10], cw.demo.digits_preprocess, cache=False)
    with pytest.raises(TypeError, match="^preprocess: "):
        cw.model_diff(model, model, pictures[:10], labels[:10], "resize", cache=False)
    with pytest.raises(TypeError, match="^preprocess: "):
        cw.model_diff(model, model, pictures[:10], labels[:10], (cw.demo.digits_preprocess, 3), cache=False)
    with pytest.raises(TypeError, match="^preprocess: "):
        cw.model_diff(model, model, pictures[:10], labels[:10], (cw.demo.digits_preprocess,) * 3, cache=False)
    with pytest.raises(ValueError, match="^images: "):
        cw.model_diff(model, model, pictures[:1], labels[:1], cw.demo.digits_preprocess, cache=False)
    with pytest.raises(ValueError, match="^labels: "):
        cw.model_diff(model, model, pictures[:10], labels[:9], cw.demo.digits_preprocess, cache=False)
