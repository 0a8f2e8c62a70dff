"""What every batch entry point does per image: a checked prompt, one prompt and one id for each
image, and a progress bar over the images (used by the pipeline, the folder runner and the text-only
baselines alike)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tqdm.auto import tqdm

from ._utils import progress_wanted

__all__ = ["check_prompt", "image_progress", "prompts_per_image"]


def check_prompt(prompt: Any) -> str:
    """``prompt`` if it is a non-empty string; an empty or whitespace-only prompt is refused
    (it would still give a mask, driven by nothing)."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"empty prompt {prompt!r}: say what to segment, e.g. \"breast tumor\"")
    return prompt


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
    if not progress_wanted(show):
        return it
    return tqdm(it, total=total, unit="image")
