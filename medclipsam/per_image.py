"""What every batch entry point does per image: one prompt and one id for each image, and a
progress bar over the images (used by the pipeline and the text-only baselines alike)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tqdm.auto import tqdm

__all__ = ["image_progress", "prompts_per_image"]


def prompts_per_image(
    items: Sequence[Any], prompts: str | Sequence[str], ids: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """One prompt and one id per image: a single prompt is repeated, ids default to the positions."""
    plist = [prompts] * len(items) if isinstance(prompts, str) else list(prompts)
    if len(plist) != len(items):
        raise ValueError(f"{len(items)} images but {len(plist)} prompts; give one prompt or one per image")
    return plist, list(ids) if ids is not None else [str(i) for i in range(len(items))]


def image_progress(it: Iterable, total: int, show: bool) -> Iterable:
    """``it`` with a progress bar counting images (``tqdm.auto``: a widget in notebooks) when
    ``show``, else ``it`` itself."""
    if not show:
        return it
    return tqdm(it, total=total, unit="image")
