"""Hugging Face hub models in the transformers format (SAM 2, SAM 3): finding their files,
checking them, and errors that say what to fetch and where to put it.

A model is named by a hub repository id (``facebook/sam2.1-hiera-tiny``) or by a local folder
holding ``config.json`` and ``model.safetensors`` (what ``hf download REPO --local-dir DIR`` or
``model.save_pretrained(DIR)`` writes).

"Verified" means, for these models:

* **the bytes**: a weight file that sits in a Hugging Face cache is a link to
  ``blobs/<hash>``, where the hub named the blob by the file's SHA-256 (large files) or git blob
  SHA-1 (small files), the hash the hub published for it. :func:`verify_weight_file` recomputes
  that hash and refuses a file that does not match (a truncated or altered download). A folder
  written by ``hf download --local-dir`` keeps the same hash in
  ``.cache/huggingface/download/<file>.metadata``, which is checked the same way. A verified file
  is stamped (size and modification time, under ``cache_dir() / "verified"``) so that gigabytes
  are hashed once, not at every load. A folder with neither (your own ``save_pretrained``) has no
  published hash to check against: it is used as it is.
* **the fit**: every parameter of the architecture must come from the file (no missing or
  wrongly shaped tensors). transformers itself would fill missing ones with random values and only
  log a warning; :func:`check_loading_info` makes that an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from .._utils import atomic_write_text, cache_dir
from ..download import is_offline, sha256sum

__all__ = [
    "GatedModelError",
    "HubModelError",
    "HubModelMissingError",
    "check_loading_info",
    "model_folder",
    "transformers_class",
    "verify_weight_file",
]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


class HubModelError(ValueError):
    """A hub model's files are there but wrong (checksum, architecture, missing tensors)."""


class HubModelMissingError(FileNotFoundError):
    """A hub model's files are neither in the local Hugging Face cache nor downloadable."""


class GatedModelError(PermissionError):
    """The model's repository is gated: access must be requested on the hub first."""


def _hub_cache() -> str:
    return str(hf_constants.HF_HUB_CACHE)


def _offline() -> bool:
    return is_offline() or bool(hf_constants.HF_HUB_OFFLINE)


def missing_help(repo_id: str, why: str, *, gated: str | None = None) -> str:
    """What to do when ``repo_id``'s files are not here: fetch them elsewhere and copy them."""
    lines = [f"The Hugging Face model {repo_id!r} is not available here: {why}."]
    if gated:
        lines.append(gated)
    lines += [
        "On a machine with network access, either",
        f"    hf download {repo_id}            (fills the Hugging Face cache; copy HF_HOME, "
        "default ~/.cache/huggingface, to this machine or point HF_HOME / HF_HUB_CACHE at it)",
        "or",
        f"    hf download {repo_id} --local-dir DIR   (then pass DIR instead of the name)",
        f"This machine's Hugging Face cache: {_hub_cache()}",
    ]
    return "\n".join(lines)


def model_folder(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    gated: str | None = None,
    download: bool = True,
) -> Path:
    """The local folder holding a transformers-format model: ``name_or_path`` itself if it is a
    folder, else the hub snapshot of repository ``name_or_path`` (downloaded once unless offline
    or ``download=False``). ``gated``: the instructions for a gated repository, used in the
    error when access is refused. The folder must hold ``config.json`` and the weights."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        folder = path
        label = str(path)
    else:
        repo_id = os.fspath(name_or_path)
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
            raise FileNotFoundError(f"{repo_id!r} is neither a folder nor a hub repository id (ORG/NAME)")
        folder = _snapshot(repo_id, revision, gated, download)
        label = f"{repo_id} ({folder})"
    if not (folder / "config.json").is_file():
        raise HubModelMissingError(
            f"{label}: no config.json; this is not a transformers-format model folder"
        )
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        why = f"{label} has config.json but no weights ({' or '.join(WEIGHT_FILES)})"
        if path.is_dir():
            raise HubModelMissingError(why)
        raise HubModelMissingError(missing_help(os.fspath(name_or_path), why, gated=gated))
    return folder


def _snapshot(repo_id: str, revision: str | None, gated: str | None, download: bool) -> Path:
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    offline = _offline() or not download
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                      local_files_only=offline))
    except GatedRepoError as e:
        raise GatedModelError(
            missing_help(repo_id, "its repository is gated and this account has no access yet",
                         gated=gated)
            + f"\n(the hub said: {str(e).splitlines()[0]})"
        ) from None
    except RepositoryNotFoundError as e:
        if gated:  # the hub answers 401/404 for a gated repository without a token
            raise GatedModelError(
                missing_help(repo_id, "the hub refused access (not logged in?)", gated=gated)
                + f"\n(the hub said: {str(e).splitlines()[0]})"
            ) from None
        raise HubModelMissingError(missing_help(repo_id, "no such repository on the hub")) from None
    except Exception as e:  # offline and not cached, no network, ...
        why = (
            "it is not in the local Hugging Face cache and downloads are off "
            "(HF_HUB_OFFLINE / MEDCLIPSAM_OFFLINE, or download=False)"
            if offline
            else f"downloading it failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        )
        raise HubModelMissingError(missing_help(repo_id, why, gated=gated)) from None


# --------------------------------------------------------------------------------------------
# checksums


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _published_hash(path: Path) -> str | None:
    """The hash the hub published for ``path``: its cache blob's name, or the etag that
    ``hf download --local-dir`` recorded; None for a folder with neither."""
    real = path.resolve()
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", real.name):
        return real.name
    meta = path.parent / ".cache" / "huggingface" / "download" / (path.name + ".metadata")
    if meta.is_file():
        lines = meta.read_text().splitlines()
        if len(lines) >= 2 and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", lines[1].strip()):
            return lines[1].strip()
    return None


def _stamp_file(digest: str) -> Path:
    return cache_dir() / "verified" / digest


def verify_weight_file(path: str | os.PathLike) -> str | None:
    """Check a weight file against the hash the hub published for it (see the module doc).

    Returns the hash checked, or None when the file has no published hash. Raises
    :class:`HubModelError` naming the file when the bytes do not match."""
    path = Path(path)
    expected = _published_hash(path)
    if expected is None:
        return None
    real = path.resolve()
    st = real.stat()
    stamp = _stamp_file(expected)
    mark = f"{real} {st.st_size} {st.st_mtime_ns}\n"
    try:
        if stamp.read_text() == mark:
            return expected
    except OSError:
        pass
    actual = sha256sum(real) if len(expected) == 64 else _git_blob_sha1(real)
    if actual != expected:
        raise HubModelError(
            f"{path}: the file's {'SHA-256' if len(expected) == 64 else 'git SHA-1'} is {actual}, "
            f"but the hub published {expected} for it: the download is incomplete or the file "
            "was changed. Delete it (and its blob) and download it again."
        )
    try:
        atomic_write_text(stamp, mark)
    except OSError:  # a read-only cache folder only costs a re-hash next time
        pass
    return expected


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder (one file, or the shards of an index)."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"

    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [folder / s for s in shards]


def check_loading_info(info: dict[str, Any], label: str) -> None:
    """Refuse a model that transformers loaded with missing or wrongly shaped tensors."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing from the file (e.g. {missing[:3]})")
        if mismatched:
            parts.append(f"{len(mismatched)} of another shape (e.g. {mismatched[:2]})")
        raise HubModelError(
            f"{label}: the weights do not fit the architecture in its config.json: "
            + "; ".join(parts)
            + ". transformers would fill these with random values; refusing instead."
        )


def transformers_class(name: str) -> Any:
    """``transformers.<name>`` (e.g. ``"Sam2Model"``), or an ImportError saying to upgrade: SAM 2
    is in transformers 4.56 and later, SAM 3 in 5.0 and later (the package asks for 5.0)."""
    import transformers

    try:
        return getattr(transformers, name)
    except AttributeError:
        raise ImportError(
            f"transformers {transformers.__version__} has no {name}; SAM 2 needs transformers 4.56 "
            "or later and SAM 3 5.0 or later: pip install -U 'transformers>=5.0'"
        ) from None
