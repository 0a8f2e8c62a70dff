"""Saliency: where in the image a text prompt is (GradCAM; gScoreCAM and M2IB to come)."""

from .gradcam import grad_cam, normalize_maps
from .targets import TargetLayer, resolve_target_layer, tokens_to_grid

__all__ = ["TargetLayer", "grad_cam", "normalize_maps", "resolve_target_layer", "tokens_to_grid"]
