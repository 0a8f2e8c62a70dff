"""The settings of each stage, as plain dataclasses (no torch): what the Python API and the
command line share, so ``medclipsam SUB --help`` shows the API's own defaults without importing
torch.

* :class:`PipelineConfig` (:class:`medclipsam.pipeline.MedCLIPSAM`), with :data:`TASK_PRESETS` (what
  the paper changes per task), :data:`OFFLINE_DEFAULTS` (what
  :meth:`~medclipsam.pipeline.MedCLIPSAM.offline` starts from) and :func:`default_k` (gScoreCAM's
  ``k`` when the configuration leaves it ``None``: the one place that decides it);
* :class:`FinetuneConfig` (:func:`medclipsam.finetune.finetune`);
* :class:`WeakConfig` (:func:`medclipsam.weak.train_segmenter` and prediction with its network).

Each has ``validate()`` (a ``ValueError`` naming the first bad setting, checked against
:mod:`medclipsam.vocab`), ``to_dict()`` and (for the training ones) ``from_dict()``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .vocab import (
    BOX_MODES,
    CONTROL_SALIENCY,
    FREEZE_MODES,
    LOSS_NAMES,
    POSTPROCESS_METHODS,
    SALIENCY_METHODS,
    SALIENCY_OPTIONS,
    SALIENCY_PRECISIONS,
    SAM_PROMPT_MODES,
    TRAINING_PRECISIONS,
)

__all__ = ["MAX_SIDE", "OFFLINE_DEFAULTS", "PAPER_K", "TASK_PRESETS", "FinetuneConfig", "PipelineConfig",
           "WeakConfig", "default_k"]

#: Default working resolution of the pipeline (longer side, pixels): SAM's own input size.
MAX_SIDE = 1024


#: gScoreCAM's channels in the paper: 300 of BiomedCLIP's 768 (39 %); the saliency functions' default.
PAPER_K = 300

#: gScoreCAM's k per world when :attr:`PipelineConfig.k` is None (read through :func:`default_k`):
#: the paper's 300 with real models (``"custom"``: a pipeline built from loaded models), 112 of the
#: toy CLIP's 128 channels offline: on the toy CLIP the gradient ranks channels no better than chance
#: (k channels drawn at random beat its top k at k = 48), so more channels make better maps; chosen
#: on the phantom validation split (``benchmarks/ablation_offline.py``).
_WORLD_K = {"real": PAPER_K, "custom": PAPER_K, "offline": 112}


def default_k(world: str) -> int:
    """gScoreCAM's k in ``world`` (``"real"``, ``"offline"`` or ``"custom"``) when none is given."""
    if world not in _WORLD_K:
        raise ValueError(f"unknown world {world!r}; choose one of {', '.join(_WORLD_K)}")
    return _WORLD_K[world]


#: The settings :meth:`medclipsam.pipeline.MedCLIPSAM.offline` starts from besides ``k`` (see
#: :func:`default_k`): boxes, what LiteMedSAM was trained with, widened by 4 % of the image's longer
#: side (the CRF's coarse mask often covers only part of the finding, and LiteMedSAM keeps to its
#: box), from a coarse mask kept inside the picture's content (a map that lights the black frame
#: around an ultrasound fan would otherwise put the box there). All chosen on the phantom
#: validation split (``benchmarks/ablation_offline.py --split val``).
OFFLINE_DEFAULTS: dict[str, Any] = {"sam_prompt_mode": "box", "box_margin": 0.04, "within_content": True}

#: What the paper changes per task (everything else stays at the :class:`PipelineConfig` default),
#: and the smallest box each task accepts (a share of the image: lesions can be small, a lung is
#: never below 0.5 % of a chest X-ray; on the phantom validation and test splits the smallest
#: target's box is 1.5 % (breast), 0.77 % (brain) and 13 % (xray) of the image).
TASK_PRESETS: dict[str, dict[str, Any]] = {
    "breast": {"n_components": 1, "box_mode": "largest", "min_box_area": 5e-4},
    "brain": {"n_components": 1, "box_mode": "largest", "min_box_area": 5e-4},
    "xray": {"n_components": 2, "box_mode": "per_component", "min_box_area": 5e-3},
}


@dataclass
class PipelineConfig:
    """Settings of :class:`MedCLIPSAM` (defaults: MedCLIP-SAM v1: gScoreCAM, dense CRF, one box).

    * ``saliency``: ``"gscorecam"`` (paper), ``"gradcam"``, ``"m2ib"`` (v2), or a control
      (``"random"``, ``"uniform"``). ``k``: gScoreCAM's channels (``None``: the default of the
      world the pipeline is built in, :func:`default_k`; clipped to the layer's channels).
      ``saliency_kwargs``: the method's other options (:data:`~medclipsam.vocab.SALIENCY_OPTIONS`,
      e.g. gScoreCAM's ``precision``, ``weighting``, ``convention``; M2IB's ``steps``).
    * ``postprocess``: ``"crf"`` (v1, default; needs the ``crf`` extra: without it the pipeline
      uses k-means and says so in each result's flags, ``"crf_unavailable_used_kmeans"``),
      ``"kmeans"`` (v2), ``"threshold"`` (at ``threshold``), ``"otsu"``.
    * ``n_components`` largest components are kept; ``box_mode``: ``"largest"`` (one box),
      ``"per_component"`` (one per kept component, masks unioned) or ``"union"`` (one box
      around all kept).
    * ``sam_prompt_mode``: ``"box"`` (paper v1), ``"points"`` or ``"box+points"`` (v2) with
      ``points`` positives and ``negatives`` negatives per region.
    * ``multimask``: let SAM propose three masks per prompt and keep the best by predicted IoU
      (``None``: only for point prompts without a box).
    * ``box_margin``: every box is widened on each side by this share of the image's longer side
      (clipped to the image): a coarse mask that covers only part of the finding (the CRF's mask
      often shrinks to a sliver inside it) still gives SAM a box around all of it. ``0`` gives the
      coarse mask's own box (the paper).
    * ``within_content``: the coarse mask is cut to the picture's content
      (:func:`~medclipsam.prompting.content_mask`: not the black frame around an ultrasound fan
      or the padding of a letterboxed image) before its components are kept, so a map that lights
      the frame cannot put the box there. ``False`` keeps the whole coarse mask (the paper).
    * ``min_box_area``: boxes smaller than this share of the image are dropped (flag
      ``"small_box_dropped"``; none left: the flagged whole-image fallback). The default, 1e-4,
      removes specks (a one-pixel box) on any image size; the task presets set their own.
    * ``max_side``: images whose longer side exceeds it are processed at that size and the
      results mapped back (flag ``large_image_downscaled``); ``None`` keeps full resolution.
    """

    saliency: str = "gscorecam"
    k: int | None = None
    saliency_kwargs: dict[str, Any] = field(default_factory=dict)
    postprocess: str = "crf"
    threshold: float = 0.3
    n_components: int = 1
    box_mode: str = "largest"
    box_margin: float = 0.0
    within_content: bool = False
    sam_prompt_mode: str = "box"
    points: int = 1
    negatives: int = 0
    multimask: bool | None = None
    min_box_area: float = 1e-4
    seed: int = 0
    max_side: int | None = MAX_SIDE

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting that is not one of the known words."""
        for name, value, allowed in (
            ("saliency", self.saliency, (*SALIENCY_METHODS, *CONTROL_SALIENCY)),
            ("postprocess", self.postprocess, POSTPROCESS_METHODS),
            ("box_mode", self.box_mode, BOX_MODES),
            ("sam_prompt_mode", self.sam_prompt_mode, SAM_PROMPT_MODES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        self._validate_saliency()
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")
        if not 0.0 <= self.box_margin <= 0.5:
            raise ValueError(f"box_margin is a share of the image's longer side in [0, 0.5], got {self.box_margin}")
        if not isinstance(self.within_content, bool):
            raise ValueError(f"within_content must be True or False, got {self.within_content!r}")
        if not 0.0 <= self.min_box_area < 1.0:
            raise ValueError(f"min_box_area is a share of the image in [0, 1), got {self.min_box_area}")
        if self.max_side is not None and (not isinstance(self.max_side, int) or self.max_side < 16):
            raise ValueError(f"max_side must be None or an integer >= 16, got {self.max_side!r}")

    def _validate_saliency(self) -> None:
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k (gScoreCAM's channels) must be None or an integer >= 1, got {self.k!r}")
        if not isinstance(self.saliency_kwargs, dict):
            raise ValueError(f"saliency_kwargs must be a dict, got {type(self.saliency_kwargs).__name__}")
        if "k" in self.saliency_kwargs:
            raise ValueError("k is a field of PipelineConfig (k=...), not a saliency_kwargs entry")
        allowed = SALIENCY_OPTIONS.get(self.saliency, ())
        unknown = sorted(set(self.saliency_kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"saliency {self.saliency!r} takes no option {', '.join(unknown)}; "
                             f"its options: {', '.join(allowed) or 'none'}")
        precision = self.saliency_kwargs.get("precision", "fp32")
        if precision not in SALIENCY_PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(SALIENCY_PRECISIONS)}")

    def with_k(self, world: str) -> PipelineConfig:
        """This configuration with ``k`` decided: as set, else :func:`default_k` of ``world``."""
        return self if self.k is not None else replace(self, k=default_k(world))

    def saliency_options(self) -> dict[str, Any]:
        """The keyword arguments of the saliency method: ``saliency_kwargs``, and ``k`` for a
        method that takes it (call :meth:`with_k` first: ``k`` None is the method's own default)."""
        takes_k = "k" in SALIENCY_OPTIONS.get(self.saliency, ())
        return {**({"k": self.k} if takes_k and self.k is not None else {}), **self.saliency_kwargs}

    def for_task(self, task: str | None) -> PipelineConfig:
        """This configuration with the task's preset applied (unknown task: unchanged)."""
        return replace(self, **TASK_PRESETS.get(task or "", {}))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneConfig:
    """Settings of :func:`medclipsam.finetune.finetune` (defaults: the MedCLIP-SAMv2 recipe, except ``lr``)."""

    out_dir: str = "finetune_out"
    loss: str = "dhn_nce"
    tau: float = 0.6  # fixed temperature (ignored when learn_logit_scale)
    learn_logit_scale: bool = False  # use and train the model's logit scale instead of tau
    beta1: float = 0.15  # hard-negative weighting, image -> text
    beta2: float = 0.15  # hard-negative weighting, text -> image
    alpha: float = 1.0  # weight of the positive in hn_nce only (dhn_nce is hn_nce with alpha 0)
    batch_size: int = 16  # per process
    lr: float = 1e-5  # v2 script: 1e-3; paper: 1e-6 (see the module docstring)
    weight_decay: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    warmup_steps: int = 1000  # optimiser steps of linear warm-up, then cosine decay
    epochs: int = 32
    grad_accum_steps: int = 1
    max_grad_norm: float | None = None
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    freeze: str = "none"  # none | text | image
    trainable_blocks: int | None = None  # only the last N blocks of each unfrozen tower train
    seed: int = 0
    num_workers: int = 4
    device: str = "auto"
    drop_last: bool = True
    eval_every: int = 1  # epochs between validation passes (0: never)
    eval_before: bool = True  # evaluate the starting model too (epoch 0 row)
    group_identical_captions: bool = True
    checkpoint_every_steps: int | None = None  # extra mid-epoch checkpoints
    keep_checkpoints: int | None = 2  # None keeps all
    stop_after_steps: int | None = None  # stop cleanly (with a checkpoint) after N optimiser steps
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {sorted(LOSS_NAMES)}, got {self.loss!r}")
        if self.freeze not in FREEZE_MODES:
            raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {self.freeze!r}")
        if self.precision not in TRAINING_PRECISIONS:
            raise ValueError(f"precision must be one of {TRAINING_PRECISIONS}, got {self.precision!r}")
        positive = {"batch_size": self.batch_size, "epochs": self.epochs,
                    "grad_accum_steps": self.grad_accum_steps}
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not self.learn_logit_scale and not (self.tau > 0):
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0, warmup_steps and weight_decay >= 0")
        if self.trainable_blocks is not None and self.trainable_blocks < 0:
            raise ValueError(f"trainable_blocks must be >= 0 or None, got {self.trainable_blocks}")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ValueError(f"stop_after_steps must be >= 1, got {self.stop_after_steps}")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1 or None, got {self.keep_checkpoints}")

    def to_dict(self) -> dict:
        """Plain JSON-compatible dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown FinetuneConfig field(s): {unknown}")
        d = dict(d)
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)


@dataclass
class WeakConfig:
    """Settings of :func:`medclipsam.weak.train_segmenter` (and of prediction with a trained network)."""

    out_dir: str = "weak_out"
    epochs: int = 100
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-5
    patience: int | None = 20  # early stopping: epochs without a better validation Dice (None: off)
    min_epochs: int = 50  # patience counts from here at the earliest (small-target Dice stays flat at first)
    size: int = 96  # training/inference resolution (images resized, square; masks nearest)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    augment: bool = True
    precision: str = "auto"  # auto: bf16/fp16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    device: str = "auto"
    keep_checkpoints: int | None = None  # None keeps every epoch's weights (the ensemble needs them)
    stop_after_epochs: int | None = None  # stop cleanly after N epochs (to test/emulate interruption)
    progress: bool = True

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.strides = tuple(int(s) for s in self.strides)

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if len(self.channels) < 2 or len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"need len(strides) == len(channels) - 1 >= 1, got channels {self.channels}, "
                f"strides {self.strides}"
            )
        factor = math.prod(self.strides)
        if self.size < 1 or self.size % factor:
            raise ValueError(f"size must be a positive multiple of {factor} "
                             f"(the product of strides {self.strides}), got {self.size}")
        if self.precision not in TRAINING_PRECISIONS:
            raise ValueError(f"precision must be one of {TRAINING_PRECISIONS}, got {self.precision!r}")
        for name in ("keep_checkpoints", "stop_after_epochs"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {v}")

    def to_dict(self) -> dict:
        """Plain JSON-able values (tuples become lists)."""
        d = asdict(self)
        d["channels"], d["strides"] = list(self.channels), list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WeakConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (newer files load in older code)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
