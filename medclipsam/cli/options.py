"""The options several commands share, each group defined once, and what turns a parsed namespace
into the API's settings (:class:`~medclipsam.config.PipelineConfig` overrides, a
:class:`~medclipsam.config.WeakConfig` or :class:`~medclipsam.config.FinetuneConfig`, a loaded
pipeline).

Defaults come from :mod:`medclipsam.config` and choices from :mod:`medclipsam.vocab`. A pipeline
option the user leaves out is None and is not passed on, so the API's own default applies (and the
offline world's, where it has its own). Nothing here imports torch at module level.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from typing import Any

from ..config import OFFLINE_DEFAULTS, PipelineConfig, WeakConfig, default_k
from ..vocab import (
    BOX_MODES,
    POSTPROCESS_METHODS,
    SALIENCY_METHODS,
    SALIENCY_OPTIONS,
    SALIENCY_PRECISIONS,
    SAM_PROMPT_MODES,
    TASKS,
)

__all__ = [
    "PIPELINE_FIELDS", "add_device", "add_folder_run", "add_models", "add_prompting", "add_quiet", "add_resume",
    "add_saliency", "add_scoring", "add_threads", "add_unet", "config_from", "is_offline",
    "load_pipeline", "pipeline_overrides",
]

_PIPE = PipelineConfig()
_WEAK = WeakConfig()

#: Pipeline options (their ``dest``) -> the :class:`PipelineConfig` field each sets. The saliency
#: method's own options (``--k``, ``--precision``) are checked against ``--saliency`` instead
#: (:data:`~medclipsam.vocab.SALIENCY_OPTIONS`), and ``--multimask`` is a switch.
PIPELINE_FIELDS = {
    "saliency": "saliency", "postprocess": "postprocess", "threshold": "threshold",
    "components": "n_components", "box_mode": "box_mode", "box_margin": "box_margin",
    "within_content": "within_content", "sam_prompt_mode": "sam_prompt_mode",
    "points": "points", "negatives": "negatives", "seed": "seed",
}
_SALIENCY_OWN = ("k", "precision")

Adder = argparse.ArgumentParser | argparse._ArgumentGroup


# --------------------------------------------------------------------------------------------
# option groups


def add_threads(p: Adder) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads torch may use (default: torch's own choice, usually one per core)")


def add_quiet(p: Adder, bars: bool = False) -> None:
    p.add_argument("--quiet", action="store_true",
                   help=f"no progress bar{'s' if bars else ''} (default: off)")


def add_resume(p: Adder) -> None:
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint (default: off)")


def add_device(p: Adder, default: str = "auto", kinds: str = "auto, cpu, cuda, mps") -> None:
    p.add_argument("--device", default=default, help=f"{kinds} (default: %(default)s)")


def add_folder_run(p: argparse.ArgumentParser, *, images: str, out: str, task: str, failed: str) -> None:
    """--images, --prompt, --out, --task, --strict, --quiet: a folder of images run through the
    pipeline (segment, pseudo-label); each command words what its folders hold."""
    p.add_argument("--images", required=True, help=images)
    p.add_argument("--prompt", required=True, help='what to segment, e.g. "breast tumor"')
    p.add_argument("--out", required=True, help=out)
    p.add_argument("--task", choices=TASKS, help=task)
    p.add_argument("--strict", action="store_true",
                   help=f"stop at the first image that cannot be read (default: off: record it as {failed} "
                   "and go on; exit code 1 if any failed)")
    add_quiet(p)


def add_models(p: argparse.ArgumentParser) -> None:
    """--clip, --sam, --sam-checkpoint, --device: the models a pipeline is built from
    (:func:`load_pipeline`); the defaults are the offline world's."""
    g = p.add_argument_group("models")
    g.add_argument("--clip", default="toy",
                   help="toy | biomedclip | an open_clip name | a checkpoint file | a model folder (a "
                   "Hugging Face snapshot) | local-dir:PATH (default: %(default)s)")
    g.add_argument("--sam", default="litemedsam",
                   help="litemedsam (ships with the package, no download) | vit_b | vit_l | vit_h | medsam | "
                   "sam2-hiera-tiny/small/base-plus/large | "
                   "a checkpoint or model folder | sam3-text[:FOLDER] (SAM 3 from the text alone) "
                   "(default: %(default)s)")
    g.add_argument("--sam-checkpoint", metavar="PATH",
                   help="your own file for --sam litemedsam|vit_b|vit_l|vit_h|medsam (--sam medsam --sam-checkpoint "
                   "medsam_vit_b.pth: MedSAM with MedSAM's preprocessing) (default: the registry's "
                   "verified download)")
    add_device(g, kinds="auto, cpu, cuda, cuda:1, mps")


def _pipeline_group(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The parser's "pipeline settings" group (made once; the saliency and prompting options share it)."""
    for g in p._action_groups:
        if g.title == "pipeline settings":
            return g
    return p.add_argument_group("pipeline settings")


def add_saliency(p: argparse.ArgumentParser) -> None:
    """--saliency, --k, --precision, --postprocess (saliency map -> coarse mask)."""
    g = _pipeline_group(p)
    g.add_argument("--saliency", choices=SALIENCY_METHODS,
                   help=f"saliency method (default: {_PIPE.saliency})")
    g.add_argument("--k", type=int,
                   help=f"gScoreCAM channels (default: {default_k('real')} as in the paper, "
                   f"{default_k('offline')} in the offline world); each channel costs one image forward "
                   "(benchmarks/real_path_times.py)")
    g.add_argument("--precision", choices=SALIENCY_PRECISIONS, help="gScoreCAM scoring precision (default: fp32)")
    g.add_argument("--postprocess", choices=POSTPROCESS_METHODS,
                   help=f"saliency -> coarse mask (default: {_PIPE.postprocess}; without the crf extra "
                   "the pipeline uses kmeans and flags each result)")


def add_prompting(p: argparse.ArgumentParser) -> None:
    """Coarse mask -> SAM's prompts: --threshold, --components, --box-mode, --box-margin, --within-content,
    --sam-prompt-mode, --points, --negatives, --multimask, --seed."""
    g = _pipeline_group(p)
    g.add_argument("--threshold", type=float,
                   help=f"for --postprocess threshold (default: {_PIPE.threshold})")
    g.add_argument("--components", type=int,
                   help=f"largest connected components kept (default: {_PIPE.n_components}; the task's preset with --task)")
    g.add_argument("--box-mode", choices=BOX_MODES,
                   help=f"boxes from the kept components (default: {_PIPE.box_mode}; the task's preset with --task)")
    g.add_argument("--box-margin", type=float,
                   help="widen each box on every side by this share of the image's longer side (default: "
                   f"{OFFLINE_DEFAULTS.get('box_margin', _PIPE.box_margin)} in the offline world, "
                   f"{_PIPE.box_margin} otherwise)")
    g.add_argument("--within-content", action=argparse.BooleanOptionalAction, default=None,
                   help="cut the coarse mask to the picture's content (not the black frame around an "
                   f"ultrasound fan) before boxing it (default: {OFFLINE_DEFAULTS.get('within_content', False)} "
                   f"in the offline world, {_PIPE.within_content} otherwise)")
    g.add_argument("--sam-prompt-mode", choices=SAM_PROMPT_MODES,
                   help=f"what SAM is given (default: {OFFLINE_DEFAULTS['sam_prompt_mode']} in the offline world, "
                   f"{_PIPE.sam_prompt_mode} otherwise)")
    g.add_argument("--points", type=int, help=f"positive points per region (default: {_PIPE.points})")
    g.add_argument("--negatives", type=int, help=f"negative points per region (default: {_PIPE.negatives})")
    g.add_argument("--multimask", action="store_true",
                   help="best of SAM's three masks by predicted IoU for every prompt (default: only for "
                   "points without a box)")
    g.add_argument("--seed", type=int, help=f"seed of point sampling and control maps (default: {_PIPE.seed})")


def add_scoring(p: Adder) -> None:
    """--nsd-tolerance, --n-boot: how masks are scored against ground truth."""
    p.add_argument("--nsd-tolerance", type=float, default=2.0,
                   help="NSD tolerance in pixels (default: %(default)s)")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples for the CIs (default: %(default)s)")


def add_unet(p: Adder, epochs: str, batch_size: str, size: str) -> None:
    """--epochs, --batch-size, --size of the Residual UNet (defaults: WeakConfig's); each command
    words their help its own way."""
    w = _WEAK
    p.add_argument("--epochs", type=int, default=w.epochs, help=f"{epochs} (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=w.batch_size, help=f"{batch_size} (default: %(default)s)")
    p.add_argument("--size", type=int, default=w.size, help=f"{size} (default: %(default)s)")


# --------------------------------------------------------------------------------------------
# the parsed namespace -> settings and models


def pipeline_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`PipelineConfig` fields the user set with the pipeline options the command has
    (others keep the API's defaults, and the offline world's where it has its own), checked
    (``ValueError`` naming the option) before any model loads."""
    over: dict[str, Any] = {field: getattr(args, dest) for dest, field in PIPELINE_FIELDS.items()
                            if getattr(args, dest, None) is not None}
    own = {name: getattr(args, name) for name in _SALIENCY_OWN if getattr(args, name, None) is not None}
    method = over.get("saliency", _PIPE.saliency)
    foreign = [f"--{name}" for name in own if name not in SALIENCY_OPTIONS[method]]
    if foreign:
        raise ValueError(f"{' and '.join(foreign)}: not an option of --saliency {method} "
                         f"(its options: {', '.join(SALIENCY_OPTIONS[method]) or 'none'})")
    if "k" in own:
        over["k"] = own.pop("k")
    if own:
        over["saliency_kwargs"] = own
    if getattr(args, "multimask", False):
        over["multimask"] = True
    PipelineConfig(**over).validate()
    return over


def config_from(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """A settings dataclass (``WeakConfig``, ``FinetuneConfig``) from the options named like its
    fields, and ``given`` (the ones the command words differently, e.g. ``out_dir=args.out``)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names}, **given)


def _process_device(device: str) -> str:
    """``device`` as given; under torchrun (``WORLD_SIZE`` > 1) each process's own device
    (``cuda:LOCAL_RANK`` for "auto"/"cuda", :func:`~medclipsam.finetune.ddp_device`), so that a
    folder run sharded over N processes uses N GPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    import torch

    from ..finetune import ddp_device

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return str(ddp_device(device, int(os.environ.get("LOCAL_RANK", "0")),
                          int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])), cuda))


def is_offline(args: argparse.Namespace) -> bool:
    """Whether the models named are the offline world's (the toy CLIP with LiteMedSAM, no file of
    one's own)."""
    return (args.clip == "toy" and str(args.sam).lower() == "litemedsam"
            and not getattr(args, "sam_checkpoint", None))


def load_pipeline(args: argparse.Namespace, **overrides: Any):
    """The offline world for ``--clip toy --sam litemedsam`` (the defaults), else the named
    models (real ones downloaded once), with the pipeline settings ``overrides``
    (:func:`pipeline_overrides`); ``--sam sam3-text[:FOLDER]`` is SAM 3 segmenting from the text alone."""
    from ..compare import is_text_backend
    from ..pipeline import MedCLIPSAM

    if is_text_backend(args.sam):  # SAM 3 from the text alone: no CLIP, no saliency settings
        from ..text_baselines import Sam3TextBaseline

        return Sam3TextBaseline.from_pretrained(args.sam.partition(":")[2] or "facebook/sam3",
                                                device=args.device)
    device = _process_device(args.device)
    if is_offline(args):
        return MedCLIPSAM.offline(device=device, **overrides)
    return MedCLIPSAM.from_pretrained(args.clip, args.sam, device=device,
                                      sam_checkpoint=getattr(args, "sam_checkpoint", None),
                                      **overrides)
