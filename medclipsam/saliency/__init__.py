"""Saliency: where in the image a text prompt is (GradCAM, gScoreCAM, M2IB), and checks of it.

:func:`saliency_maps` is the one entry point (any method, one image, several prompts, maps in the
image's own coordinates); :func:`prompt_sensitivity` checks that a map depends on the prompt.
The methods share one CAM core (:mod:`medclipsam.saliency.cam`: target layer, hooks, forward and
backward, token grid, ReLU/resize/normalise) and one way from an image and prompts to maps on the
image (:class:`~medclipsam.saliency.api.PromptBatch`).

Modules: ``targets`` (where to hook, tokens to grid) -> ``cam`` (the core) -> ``gradcam``,
``gscorecam``, ``m2ib`` (how each weighs channels; gScoreCAM's speed-ups in ``gscorecam_fast`` and
``gscorecam_multi``) -> ``api`` (names, ``PromptBatch``, ``saliency_maps``) -> ``sensitivity``,
``evaluate``.
"""

from .api import METHODS, PromptBatch, saliency_maps
from .cam import normalize_maps, resolve_target
from .gradcam import grad_cam
from .gscorecam import gscorecam, gscorecam_details
from .gscorecam_multi import gscorecam_multi
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
    "PromptBatch",
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
    "resolve_target",
    "resolve_target_layer",
    "saliency_maps",
    "tokens_to_grid",
]
