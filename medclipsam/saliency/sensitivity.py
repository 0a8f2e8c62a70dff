"""Does the saliency map depend on the prompt? A check against control prompts.

Users of the reference implementation reported (MedCLIP-SAM issue 3) that its saliency maps
barely change with the text, even for nonsense. A map that looks the same for "breast tumor", an
empty prompt and "xq zvv blorp" shows what the image tower finds salient, not where the prompt
is. :func:`prompt_sensitivity` computes the map of the prompt and of a few control prompts for one
image with the same saliency method and measures how far the prompt's map is from each.

Distance: ``d = min(1, 1 - r)`` with ``r`` the Pearson correlation of the two maps over the
image's pixels (padding excluded). Symmetric, in [0, 1], 0 for identical maps (or maps that differ
only by brightness and contrast, which the min-max normalised maps and the relative thresholds
downstream ignore anyway), 1 for maps with no linear relation or opposite ones: a map for the
finding should be unrelated to the map of a nonsense prompt. Pearson rather than SSIM: it has no
window size or constants to choose and reads directly as "how much of one map the other
explains". When exactly one map is constant (nothing salient) the correlation is undefined; the
distance is then 1 (one map shows something, the other nothing); two constant maps are at 0.

Summary: ``sensitivity = min over controls of d``: the map is only as prompt-specific as its
closest control. Below ``threshold`` (default 0.1: the prompt's map and some control's map
correlate at r > 0.9) the report carries a warning, also emitted as a
:class:`PromptInsensitiveWarning` so notebooks show it.

Stochastic methods (M2IB draws noise) differ between two runs of the *same* prompt; a noisy
method would then look prompt-sensitive. For a method that takes a ``seed`` the prompt's map is
computed a second time with another seed and that distance is reported as ``noise_floor``; the
report also warns when the controls are not clearly further away than that
(``sensitivity < 2 * noise_floor``).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .api import PromptBatch, method_name

__all__ = [
    "CONTROL_PROMPTS",
    "DEFAULT_THRESHOLD",
    "OTHER_ORGAN",
    "PromptInsensitiveWarning",
    "SensitivityReport",
    "control_prompts",
    "map_distance",
    "prompt_sensitivity",
]

#: Controls every prompt is compared with: no text, text the model cannot know, healthy tissue.
CONTROL_PROMPTS: dict[str, str] = {
    "empty": "",
    "nonsense": "xq zvv blorp",
    "normal tissue": "normal tissue",
}
#: The "another organ" control per task: an organ that is not the task's target. The chest X-ray
#: control names an organ that *is* in the image (the heart), a harder test of spatial
#: specificity than an absent one.
OTHER_ORGAN: dict[str, str] = {"breast": "liver", "brain": "kidney", "xray": "heart"}
#: Fallback organ controls for prompts without a known task (the first one not in the prompt).
GENERIC_ORGANS: tuple[str, ...] = ("liver", "kidney")
#: Sensitivity below this warns (r > 0.9 with the closest control's map).
DEFAULT_THRESHOLD = 0.1


class PromptInsensitiveWarning(UserWarning):
    """The saliency map barely changes when the prompt is replaced by a control prompt."""


def control_prompts(prompt: str, task: str | None = None) -> dict[str, str]:
    """The default controls for ``prompt``: :data:`CONTROL_PROMPTS` plus "another organ"
    (:data:`OTHER_ORGAN` for a known ``task``, else the first of :data:`GENERIC_ORGANS` that the
    prompt does not mention). Controls whose text equals the prompt are left out."""
    controls = dict(CONTROL_PROMPTS)
    if task is not None and task in OTHER_ORGAN:
        controls["another organ"] = OTHER_ORGAN[task]
    else:
        words = prompt.lower()
        controls["another organ"] = next((o for o in GENERIC_ORGANS if o not in words), GENERIC_ORGANS[-1])
    norm = prompt.strip().lower()
    return {k: v for k, v in controls.items() if v.strip().lower() != norm}


def map_distance(a: Any, b: Any) -> float:
    """``min(1, 1 - Pearson r)`` between two maps of the same shape: 0 identical (up to brightness
    and contrast), 1 unrelated or opposite. One constant map and one not: 1; both constant: 0."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"maps differ in size: {np.shape(a)} vs {np.shape(b)}")
    if not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise ValueError("maps contain NaN or infinite values")
    if np.array_equal(x, y):
        return 0.0  # exactly: the dot products below round differently on different CPUs
    x = x - x.mean()
    y = y - y.mean()
    nx, ny = float(np.sqrt(x @ x)), float(np.sqrt(y @ y))
    tol = 1e-12 * max(len(x), 1)
    if nx <= tol and ny <= tol:
        return 0.0
    if nx <= tol or ny <= tol:
        return 1.0
    r = float(x @ y) / (nx * ny)
    d = 1.0 - r
    # Maps equal up to brightness and contrast give r = 1 up to rounding (~1e-16 * sqrt(n),
    # which depends on the CPU's vector width): call that 0.
    if d < 1e-12:
        return 0.0
    return float(min(1.0, d))


@dataclass
class SensitivityReport:
    """The prompt's map, each control's map and how far apart they are (see the module doc)."""

    prompt: str
    method: str
    prompt_map: np.ndarray  # (H, W) on the original image's grid
    controls: dict[str, str]  # control name -> control text
    control_maps: dict[str, np.ndarray]
    distances: dict[str, float]
    sensitivity: float
    closest: str  # the control with the smallest distance
    threshold: float = DEFAULT_THRESHOLD
    noise_floor: float | None = None  # distance between two seeds' maps of the prompt itself
    warning: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def insensitive(self) -> bool:
        """True when the map barely depends on the prompt: ``sensitivity < threshold``, or not
        more than twice the distance between two runs of the prompt itself (``noise_floor``)."""
        floor = 2.0 * self.noise_floor if self.noise_floor is not None else 0.0
        return self.sensitivity < max(self.threshold, floor)

    def table(self) -> str:
        """A plain-text table: one row per control with its text and distance."""
        name_w = max(len("control"), *(len(n) for n in self.controls))
        text_w = max(len("text"), *(len(repr(t)) for t in self.controls.values()))
        lines = [
            f"prompt sensitivity of {self.method} for {self.prompt!r}",
            f"{'control':<{name_w}}  {'text':<{text_w}}  distance (1 - Pearson r)",
        ]
        for name, text in self.controls.items():
            mark = "  <- closest" if name == self.closest else ""
            lines.append(f"{name:<{name_w}}  {text!r:<{text_w}}  {self.distances[name]:.3f}{mark}")
        if self.noise_floor is not None:
            lines.append(f"{'same prompt, other seed':<{name_w + text_w + 2}}  {self.noise_floor:.3f}  (noise floor)")
        verdict = "INSENSITIVE" if self.insensitive else "ok"
        lines.append(f"sensitivity = {self.sensitivity:.3f} (threshold {self.threshold:g}): {verdict}")
        if self.warning:
            lines.append(f"warning: {self.warning}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        """Numbers only (no maps), e.g. for a JSON log."""
        return {
            "prompt": self.prompt,
            "method": self.method,
            "controls": dict(self.controls),
            "distances": dict(self.distances),
            "sensitivity": self.sensitivity,
            "closest": self.closest,
            "threshold": self.threshold,
            "noise_floor": self.noise_floor,
            "warning": self.warning,
        }


def _takes_seed(method: Callable) -> bool:
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return "seed" in params


def prompt_sensitivity(
    clip: Any,
    image: Any,
    prompt: str,
    method: Callable[..., torch.Tensor],
    *,
    controls: Sequence[str] | Mapping[str, str] | None = None,
    task: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    warn: bool = True,
    noise_floor: bool | None = None,
    **method_kwargs: Any,
) -> SensitivityReport:
    """How much ``method``'s saliency map of ``image`` changes when ``prompt`` is replaced by
    control prompts.

    ``clip``: a :class:`~medclipsam.models.clip.ClipBundle`; ``image``: anything
    :class:`~medclipsam.saliency.api.PromptBatch` accepts (array, PIL image, tensor, path);
    ``method``: a saliency callable
    ``(model, images, text_features, *, target=None, **kw) -> [B, H, W]`` (``grad_cam``,
    ``m2ib``, ...), called once on a batch of the image repeated for the prompt and every control;
    ``method_kwargs`` go to it. ``controls``: a list of control texts or a ``{name: text}``
    mapping; default :func:`control_prompts` (with ``task``'s other organ when given). Maps are
    compared on the original image's grid (letterbox padding excluded). Warns with
    :class:`PromptInsensitiveWarning` when ``sensitivity < threshold`` (unless ``warn=False``).
    ``noise_floor``: also run the prompt with ``seed + 1`` and report that distance (default: when
    ``method`` takes a ``seed``).
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if controls is None:
        ctrl = control_prompts(prompt, task)
    elif isinstance(controls, Mapping):
        ctrl = {str(k): str(v) for k, v in controls.items()}
    elif isinstance(controls, str):
        raise TypeError("controls must be a list of texts or a {name: text} mapping, not one string")
    else:
        ctrl = {}
        for text in map(str, controls):
            name = text or "empty"
            ctrl[name if name not in ctrl else f"{name} ({len(ctrl)})"] = text
    if not ctrl:
        raise ValueError("no control prompts to compare with")

    batch = PromptBatch(clip, image, [prompt, *ctrl.values()])
    on_image = batch.on_image(batch.run(method, **method_kwargs), normalize=False)
    prompt_map = on_image[0]
    control_maps = dict(zip(ctrl, on_image[1:]))
    distances = {name: map_distance(prompt_map, m) for name, m in control_maps.items()}
    closest = min(distances, key=distances.get)
    sensitivity = distances[closest]
    name = method_name(method)

    floor = None
    if noise_floor if noise_floor is not None else _takes_seed(method):
        kw = dict(method_kwargs, seed=int(method_kwargs.get("seed", 0)) + 1)
        again = batch.on_image(batch.run(method, rows=slice(0, 1), **kw), normalize=False)
        floor = map_distance(prompt_map, again[0])

    message = None
    if sensitivity < threshold:
        message = (
            f"{name}'s map for {prompt!r} is almost the same as for the control "
            f"{closest!r} ({ctrl[closest]!r}): distance {sensitivity:.3f} < {threshold:g}. The map "
            "shows what the image tower finds salient rather than where the prompt is; do not "
            "trust it as a localisation of the prompt."
        )
    elif floor is not None and sensitivity < 2.0 * floor:
        message = (
            f"{name}'s map for {prompt!r} differs from the control {closest!r} "
            f"({ctrl[closest]!r}) by {sensitivity:.3f}, not clearly more than two runs of the same "
            f"prompt differ ({floor:.3f}): the differences are noise, not the prompt."
        )
    if message and warn:
        warnings.warn(message, PromptInsensitiveWarning, stacklevel=2)
    return SensitivityReport(
        prompt=prompt,
        method=name,
        prompt_map=prompt_map,
        controls=ctrl,
        control_maps=control_maps,
        distances=distances,
        sensitivity=sensitivity,
        closest=closest,
        threshold=float(threshold),
        noise_floor=floor,
        warning=message,
    )
