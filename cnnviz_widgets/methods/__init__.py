"""The explanation methods: torch only, no widget code. Each leaves the model exactly as it found it."""

from .attention import ATTENTION_METHODS, attention
from .faithfulness import FaithfulnessResult, deletion_insertion
from .explanations import ATTENTION_EXPLANATIONS, EXPLANATIONS, estimated_seconds, explanation, explanations_for
from .feature_maps import feature_maps
from .filters import filter_patterns, filter_weights
from .grad_cam import CAM_METHODS, cam, grad_cam
from .gradients import GRADIENT_METHODS, gradients
from .guided_backprop import guided_backprop, guided_grad_cam
from .occlusion import OcclusionResult, occlusion
from .sanity import SANITY_METHODS, SanityResult, SanityVerdict, sanity_check, sanity_verdict

__all__ = [
    "ATTENTION_EXPLANATIONS",
    "ATTENTION_METHODS",
    "attention",
    "CAM_METHODS",
    "cam",
    "deletion_insertion",
    "estimated_seconds",
    "EXPLANATIONS",
    "explanation",
    "explanations_for",
    "FaithfulnessResult",
    "feature_maps",
    "filter_patterns",
    "filter_weights",
    "grad_cam",
    "GRADIENT_METHODS",
    "gradients",
    "guided_backprop",
    "guided_grad_cam",
    "occlusion",
    "OcclusionResult",
    "SANITY_METHODS",
    "sanity_check",
    "SanityResult",
    "sanity_verdict",
    "SanityVerdict",
]
