"""Saliency: where in the image a text prompt is (GradCAM, gScoreCAM, M2IB), and checks of it.

:func:`saliency_maps` is the one entry point (any method, one image, several prompts, maps in the
image's own coordinates); :func:`prompt_sensitivity` checks that a map depends on the prompt.
"""

from .api import METHODS, saliency_maps
from .gradcam import grad_cam, normalize_maps
from .gscorecam import gscorecam, gscorecam_details, gscorecam_multi
from .m2ib import m2ib
from .sensitivity import (
    CONTROL_PROMPTS,
    PromptInsensitiveWarning,
    SensitivityReport,
    prompt_sensitivity,
)
from .targets import TargetLayer, resolve_target_layer, tokens_to_grid

__all__ = [
    "CONTROL_PROMPTS",
    "METHODS",
    "PromptInsensitiveWarning",
    "SensitivityReport",
    "TargetLayer",
    "grad_cam",
    "gscorecam",
    "gscorecam_details",
    "gscorecam_multi",
    "m2ib",
    "normalize_maps",
    "prompt_sensitivity",
    "resolve_target_layer",
    "saliency_maps",
    "tokens_to_grid",
]
