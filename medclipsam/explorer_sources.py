"""Where the prompt explorer's images and pipeline come from: :class:`ExplorerImage` (an image with
its ground truth, task and suggested prompt), phantom images, uploaded files, and
:class:`ExplorerBuilders`, the ways to build an explorer (the headless
:class:`~medclipsam.explorer_model.ExplorerModel` and the widget view
:class:`~medclipsam.widgets.PromptExplorer`) from the offline world, a lesson's world or a folder."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .data import FolderDataset
from .data.io import read_image
from .data.phantom import PROMPTS, TASKS, PhantomDataset
from .models import load_sam
from .pipeline import MedCLIPSAM
from .worlds import pipeline_for_world

__all__ = ["ExplorerBuilders", "ExplorerImage", "phantom_images", "read_upload"]

_B = TypeVar("_B", bound="ExplorerBuilders")


@dataclass
class ExplorerImage:
    """One image the explorer can show: pixels, an optional ground-truth mask, an optional task
    (which selects the task's preset, e.g. two lung boxes for ``"xray"``) and a suggested prompt."""

    image: np.ndarray
    gt: np.ndarray | None = None
    task: str | None = None
    prompt: str | None = None


def phantom_images(per_task: int, size: int, seed: int) -> dict[str, ExplorerImage]:
    """``per_task`` held-out phantom images (with a finding) of each task, with their ground
    truth and each task's prompt."""
    images: dict[str, ExplorerImage] = {}
    for task in TASKS:
        ds = PhantomDataset(task, 8 * per_task, seed=seed, size=size, split="test")
        picked = [s for s in ds if s.mask.any()][:per_task]
        for i, s in enumerate(picked):
            images[f"{task} {i + 1} ({s.label})"] = ExplorerImage(s.rgb, s.mask, task, PROMPTS[task])
    return images


def read_upload(filename: str, content: bytes) -> np.ndarray:
    """An uploaded file's pixels (any format the data layer reads: PNG, JPEG, TIFF, DICOM, NIfTI);
    an unreadable file raises a ValueError naming it."""
    suffix = "".join(Path(filename).suffixes[-2:]) if filename.endswith(".gz") else Path(filename).suffix
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(content)
        try:
            return read_image(path, mode="rgb")
        except Exception as e:
            raise ValueError(f"cannot read the uploaded file {filename!r}: {e}") from e


class ExplorerBuilders:
    """The ways to build an explorer (the model, and the widget view over it) from a world, a
    folder or the offline world: each ends in ``cls(pipeline, images, **kwargs)``."""

    @classmethod
    def offline(cls: type[_B], *, per_task: int = 3, size: int = 256, seed: int = 0,
                device: Any = "cpu", **kwargs: Any) -> _B:
        """The offline world: :meth:`MedCLIPSAM.offline` (toy CLIP + LiteMedSAM) over
        ``per_task`` held-out phantom images (with a finding) of each task, with their ground
        truth and each task's prompt."""
        kwargs.setdefault("sam_name", "LiteMedSAM")
        return cls(MedCLIPSAM.offline(device=device), phantom_images(per_task, size, seed), **kwargs)

    @classmethod
    def for_world(cls: type[_B], world: str, *, data_dir: str | Path | None = None,
                  prompt: str | None = None, task: str | None = None, clip: str = "biomedclip",
                  sam: str = "vit_b", sam_checkpoint: str | Path | None = None,
                  k: int | None = None, device: Any = "auto", per_task: int = 3, limit: int = 12,
                  fallback: bool = True, **kwargs: Any) -> _B:
        """The explorer a lesson builds from its parameters (see :mod:`medclipsam.worlds`).

        ``"real"``: the pipeline of ``clip``, ``sam`` (``sam_checkpoint``) and ``k`` over the
        images (and masks) of ``data_dir`` (a folder with ``images/``, as ``medclipsam
        prepare`` writes; the first ``limit``), or over ``per_task`` phantom images per task when
        no folder is given; MedSAM, SAM ViT-H and SAM 2.1 tiny are offered too, loaded when
        picked. When the real models cannot be loaded: the offline world (phantom images), with
        a message.
        ``"offline"``: :meth:`offline` (``k`` still applies). ``kwargs`` go to the constructor.
        """
        pipe = pipeline_for_world(world, clip=clip, sam=sam, sam_checkpoint=sam_checkpoint, k=k,
                                  device=device, fallback=fallback)
        if pipe.world != "real":
            if data_dir:
                print(f"(the offline world explores phantom images; DATA_DIR {data_dir} is not used)")
            kwargs.setdefault("sam_name", "LiteMedSAM")
            return cls(pipe, phantom_images(per_task, 256, 0), k=k, **kwargs)
        if sam_checkpoint or str(sam) not in ("vit_b", "vit_l", "vit_h", "medsam", "litemedsam"):
            kwargs.setdefault("sam_name", f"SAM ({Path(str(sam_checkpoint or sam)).name})")
        else:
            kwargs.setdefault("sam_name", {"vit_b": "SAM ViT-B", "vit_l": "SAM ViT-L",
                                           "vit_h": "SAM ViT-H", "medsam": "MedSAM",
                                           "litemedsam": "LiteMedSAM"}[str(sam)])
        if "sam_models" not in kwargs:
            offered = {"MedSAM": "medsam", "SAM ViT-H": "vit_h",
                       "SAM 2.1 tiny": "sam2-hiera-tiny"}
            kwargs["sam_models"] = {
                label: (lambda name=name: load_sam(name, device=device))
                for label, name in offered.items() if label != kwargs["sam_name"]
            }
        if data_dir:
            return cls.from_folder(pipe, data_dir, prompt=prompt, task=task, limit=limit, k=k,
                                   **kwargs)
        print("(no DATA_DIR: the real models explore phantom images)")
        return cls(pipe, phantom_images(per_task, 256, 0), prompt=prompt, k=k, **kwargs)

    @classmethod
    def from_folder(cls: type[_B], pipeline: MedCLIPSAM, root: str | Path, *,
                    prompt: str | None = None, task: str | None = None, split: str | None = None,
                    limit: int = 12, **kwargs: Any) -> _B:
        """The first ``limit`` images of a folder data set (``root/images``, masks from
        ``root/masks`` when present: see :class:`~medclipsam.data.FolderDataset`), all with the
        same suggested ``prompt`` and ``task`` preset."""
        ds = FolderDataset(root, split=split, strict=False)
        images = {}
        for i in range(min(limit, len(ds))):
            item = ds[i]
            images[item["stem"]] = ExplorerImage(item["image"], item["mask"], task, prompt)
        return cls(pipeline, images, prompt=prompt, **kwargs)
