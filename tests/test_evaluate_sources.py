"""cw.evaluate over DataLoaders, of an iterable-style dataset with no length and of a map-style dataset, against
the model's argmax and scikit-learn's confusion matrix computed here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix
from torch.utils.data import DataLoader, Dataset, IterableDataset

import cnnviz_widgets as cw

# Does not divide the test split's 450 images: the last batch holds 2.
BATCH_SIZE = 64


class DigitStream(IterableDataset):
    """``(image, label)`` pairs one after the other, with no ``__len__``: the count is known only at the end."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return ((image, int(label)) for image, label in zip(self.x, self.y))


class DigitTable(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index], int(self.y[index])


SOURCES = {
    "iterable dataset": lambda x, y: DataLoader(DigitStream(x, y), batch_size=BATCH_SIZE),
    "map-style dataset": lambda x, y: DataLoader(DigitTable(x, y), batch_size=BATCH_SIZE),
}


@pytest.fixture(scope="module")
def digits():
    x, y, class_names = cw.demo.digits("test")
    return x, y, len(class_names)


@pytest.fixture(scope="module")
def reference(digits):
    """Predictions, probabilities and confusion matrix computed directly: one forward of the whole split."""
    x, y, num_classes = digits
    model = cw.demo.digits_model().eval()
    with torch.no_grad():
        logits = model(x)
    predictions = logits.argmax(dim=1).numpy()
    confusion = confusion_matrix(y.numpy(), predictions, labels=range(num_classes))
    return predictions, torch.softmax(logits, dim=1).numpy(), confusion


@pytest.mark.parametrize("source", SOURCES)
def test_predictions_and_confusion_match_the_models_argmax_and_sklearn(digits, reference, source):
    x, y, num_classes = digits
    predictions, probabilities, confusion = reference
    result = cw.evaluate(cw.demo.digits_model(), SOURCES[source](x, y), progress=False)
    np.testing.assert_array_equal(result.labels, y.numpy())
    np.testing.assert_array_equal(result.predictions, predictions)
    np.testing.assert_array_equal(result.confusion, confusion)
    assert result.confusion.shape == (num_classes, num_classes)
    np.testing.assert_allclose(result.probabilities, probabilities, rtol=0, atol=1e-5)
    assert sorted(result.mistakes()) == list(np.flatnonzero(predictions != y.numpy()))


def test_an_iterable_dataset_without_a_dataloader_is_refused(digits):
    x, y, _ = digits
    with pytest.raises(TypeError, match="images.*DataLoader"):
        cw.evaluate(cw.demo.digits_model(), DigitStream(x, y), progress=False)
