"""What the prompt explorer returns and keeps: :class:`ExplorerState` (what is shown now, from
:meth:`medclipsam.explorer_model.ExplorerModel.update`), :class:`ComparedPrompt` (one prompt of
the compare view) and :class:`RecentCache` (its bounded caches)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .pipeline import mask_flags
from .prompting import SamPrompts

__all__ = ["ComparedPrompt", "ExplorerState", "RecentCache"]


@dataclass
class ExplorerState:
    """What the explorer shows now, as plain values (:meth:`ExplorerModel.update` returns it)."""

    image: str  #: the image's name
    prompt: str
    method: str
    k: int | None  #: gScoreCAM's channels (None for a method without k)
    postprocess: str
    threshold: float
    sam_prompt_mode: str
    task: str | None  #: the task preset in force
    sam: str  #: the SAM model's name
    saliency: np.ndarray | None
    sam_prompts: SamPrompts | None  #: the automatic SAM prompts (coarse mask, boxes, points, flags)
    mask: np.ndarray | None  #: SAM's mask
    sam_score: float | None
    dice: float | None  #: SAM's mask against the ground truth (None without one)
    user_points: list[tuple[float, float, int]]  #: hand-made points (x, y, label)
    user_box: np.ndarray | None  #: a hand-drawn box (x0, y0, x1, y1)
    error: str | None
    seconds: float | None  #: how long the last update computed

    @property
    def coarse(self) -> np.ndarray | None:
        """The coarse mask the automatic SAM prompts come from."""
        return None if self.sam_prompts is None else self.sam_prompts.mask

    @property
    def n_boxes(self) -> int:
        pr = self.sam_prompts
        return 0 if pr is None or pr.boxes is None else len(pr.boxes)

    @property
    def flags(self) -> list[str]:
        return [] if self.sam_prompts is None else list(self.sam_prompts.flags)

    @property
    def mask_area(self) -> int | None:
        return None if self.mask is None else int(self.mask.sum())

    @property
    def mask_flags(self) -> list[str]:
        """What SAM's mask itself shows: ``empty_mask`` (no pixel) or ``mask_covers_image``
        (nearly every pixel), as :func:`medclipsam.pipeline.mask_flags` says."""
        return [] if self.mask is None else list(mask_flags(self.mask, self.flags))

    @property
    def hand_made(self) -> list[str]:
        """The hand-made SAM prompts as text: ``+(x, y)``, ``-(x, y)``, ``box (x0, y0, x1, y1)``."""
        made = [f"{'+' if lab == 1 else '-'}({x:.0f}, {y:.0f})" for x, y, lab in self.user_points]
        if self.user_box is not None:
            made.append("box ({:.0f}, {:.0f}, {:.0f}, {:.0f})".format(*self.user_box))
        return made

    def as_dict(self) -> dict[str, Any]:
        """The settings and numbers (no arrays), as :attr:`PromptExplorer.state` shows them."""
        return {
            "image": self.image, "prompt": self.prompt, "method": self.method, "k": self.k,
            "postprocess": self.postprocess, "threshold": self.threshold,
            "sam_prompt_mode": self.sam_prompt_mode, "task": self.task, "sam": self.sam,
            "n_boxes": self.n_boxes, "user_points": list(self.user_points),
            "user_box": None if self.user_box is None else self.user_box.tolist(),
            "flags": self.flags, "mask_flags": self.mask_flags, "mask_area": self.mask_area, "sam_score": self.sam_score,
            "dice": self.dice, "error": self.error,
        }


@dataclass
class ComparedPrompt:
    """One prompt of :meth:`ExplorerModel.compare_prompts`: its row of numbers and its maps."""

    row: dict[str, Any]  #: prompt, dice, sam_score, sensitivity, flags (and text_* with a baseline)
    saliency: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray | None
    text_mask: np.ndarray | None = None  #: the text-alone segmenter's mask, when there is one
    text_boxes: np.ndarray | None = None


class RecentCache(OrderedDict):
    """A dict that keeps only its ``maxsize`` most recently used entries (reads count as use)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = int(maxsize)

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)

    def drop(self, which: Callable[[Any], bool]) -> None:
        """Forget every entry whose key ``which`` accepts."""
        for key in [k for k in self if which(k)]:
            del self[key]
