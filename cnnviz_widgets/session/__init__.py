"""What panels compute with, split by job: the session itself (images, classes, layers, the caching
protocol, the weights' watch), the pictures and what the preprocessing does to them, the cached calls of
each method, and the pass over every image with its disk cache."""

from .pictures import input_crop_box, normalization_of, tensor_picture
from .session import Session

__all__ = ["Session", "input_crop_box", "normalization_of", "tensor_picture"]
