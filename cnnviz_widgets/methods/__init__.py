"""The explanation methods: torch only, no widget code. Each leaves the model exactly as it found it."""

from .feature_maps import feature_maps
from .filters import filter_patterns, filter_weights
from .grad_cam import grad_cam
from .guided_backprop import guided_backprop, guided_grad_cam
from .occlusion import OcclusionResult, occlusion

__all__ = [
    "feature_maps",
    "filter_patterns",
    "filter_weights",
    "grad_cam",
    "guided_backprop",
    "guided_grad_cam",
    "occlusion",
    "OcclusionResult",
]
