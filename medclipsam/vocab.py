"""The package's words: every closed list of names, in one place.

Modules check their arguments against these tuples and the command line builds its ``choices=``
from them, so a new saliency method, data source or post-processing step is named once. The module
imports nothing (the command line reads it without importing torch).
"""

from __future__ import annotations

__all__ = [
    "BOX_MODES",
    "CONTROL_SALIENCY",
    "DATA_SOURCES",
    "FREEZE_MODES",
    "LOSS_NAMES",
    "POSTPROCESS_METHODS",
    "SALIENCY_METHODS",
    "SALIENCY_OPTIONS",
    "SALIENCY_PRECISIONS",
    "SAM2_MODELS",
    "SAM_MODELS",
    "SAM_PROMPT_MODES",
    "TASKS",
    "TEXT_BACKENDS",
    "TRAINING_PRECISIONS",
]

#: The three tasks of the paper (and of the phantom world): breast ultrasound lesion, brain MRI
#: tumour, chest X-ray lungs.
TASKS: tuple[str, ...] = ("breast", "brain", "xray")

#: Saliency methods (:data:`medclipsam.saliency.METHODS`): gScoreCAM (paper v1), GradCAM, M2IB (v2).
SALIENCY_METHODS: tuple[str, ...] = ("gscorecam", "gradcam", "m2ib")
#: Saliency "methods" that ignore the text prompt, for control experiments: a smooth random map,
#: a constant map.
CONTROL_SALIENCY: tuple[str, ...] = ("random", "uniform")
#: The options each saliency method takes through :class:`~medclipsam.config.PipelineConfig`
#: (``k`` is its own field there; the rest go in ``saliency_kwargs``); the controls take none.
SALIENCY_OPTIONS: dict[str, tuple[str, ...]] = {
    "gscorecam": ("k", "batch_size", "target", "weighting", "precision", "convention", "pick", "pick_seed"),
    "gradcam": ("target",),
    "m2ib": ("target", "layer_index", "beta", "steps", "lr", "seed", "noise", "noise_samples", "init_alpha"),
}
#: gScoreCAM's scoring precision (``"fast"``: bf16 on CPUs that have it, fp16 on CUDA).
SALIENCY_PRECISIONS: tuple[str, ...] = ("fp32", "fast", "bf16", "fp16")

#: Saliency map -> coarse mask (:func:`medclipsam.coarse.coarse_mask`): dense CRF (v1),
#: k-means (v2), a fixed threshold, Otsu's threshold.
POSTPROCESS_METHODS: tuple[str, ...] = ("crf", "kmeans", "threshold", "otsu")
#: Boxes from the kept components: the largest's, one per component, one around all.
BOX_MODES: tuple[str, ...] = ("largest", "per_component", "union")
#: What SAM is given (its prompts, not the text prompt): a box (v1), points, or both (v2).
SAM_PROMPT_MODES: tuple[str, ...] = ("box", "points", "box+points")

#: SAM checkpoints the weight registry knows by name (:func:`medclipsam.models.load_sam`).
SAM_MODELS: tuple[str, ...] = ("litemedsam", "vit_b", "vit_l", "vit_h", "medsam")
#: SAM 2.1 models on the Hugging Face hub (:data:`medclipsam.models.sam2.SAM2_MODELS`).
SAM2_MODELS: tuple[str, ...] = (
    "sam2-hiera-tiny", "sam2-hiera-small", "sam2-hiera-base-plus", "sam2-hiera-large",
)
#: SAM 3 segmenting from the text alone, without CLIP (``"sam3-text"`` or ``"sam3-text:FOLDER"``).
TEXT_BACKENDS: tuple[str, ...] = ("sam3-text", "sam3")

#: Contrastive losses of :mod:`medclipsam.losses`.
LOSS_NAMES: tuple[str, ...] = ("infonce", "dcl", "hn_nce", "dhn_nce")
#: Which CLIP tower fine-tuning freezes.
FREEZE_MODES: tuple[str, ...] = ("none", "text", "image")
#: Mixed precision of the training loops (``"auto"``: bf16/fp16 on a GPU, fp32 on the CPU).
TRAINING_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

#: Public data sets with a converter in :mod:`medclipsam.data.sources` (module names).
DATA_SOURCES: tuple[str, ...] = ("busi", "udiat", "brain_figshare", "covidqu", "roco")
