"""Checking that a state dict fits a model before loading it, with a message a user can act on."""

from __future__ import annotations

import torch

__all__ = ["state_mismatch"]


def state_mismatch(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> str | None:
    """None when ``sd`` has exactly ``model``'s keys and shapes, else a short description of the
    missing, unexpected and wrongly shaped entries (counts and examples)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} of another shape (e.g. {k}: file {tuple(sd[k].shape)}, "
            f"model {tuple(own[k].shape)})"
        )
    return "; ".join(parts)
