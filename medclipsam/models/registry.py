"""The weight registry: which checkpoint files the real world needs, where they come from, and
how each is checked.

:func:`weight_path` returns a verified local file, downloading it once into
``medclipsam._utils.cache_dir() / "weights"`` (``$MEDCLIPSAM_CACHE`` moves it). When a file cannot
be fetched (offline mode, no network, or a file its authors only share by hand) the error says
exactly what to fetch and the exact path to put it at, so a user can copy it over from another
machine.

About the SAM checksums: segment_anything's file names end in six hex digits
(``sam_vit_b_01ec64.pth``). Those are the first digits of the file's **MD5** (not SHA-256, unlike
torch.hub's convention): the full MD5 values below are the ones published for these files in many
independent projects, and each starts with its file-name suffix. No SHA-256 is published by the
authors, so ``sha256`` stays ``None``; do not fill it in without hashing the official file.

A user's file is never deleted. A file at the cache path that does not match its checksum (a
fine-tuned copy, a MedSAM file under a SAM name, a truncated copy) stays where it is while the
official file is downloaded under a temporary name; only when that download verifies is the
user's file moved aside (``<stem>.not-verified.pth``, never overwritten) and the official one put
in its place, with a warning naming both. Offline, or when the download fails, the error says
what differs and how to use the file anyway (``load_sam(NAME, checkpoint=PATH)``).

The ``.verified`` stamp. Hashing a 2.4 GB checkpoint takes seconds, so a file that verified once
gets a stamp beside it (``<file>.verified``) recording the checksum it matched and the file's size,
inode, modification time and status-change time (``st_ctime``, which no tool can set back). The
next load skips the hash while all of these are unchanged; any write, copy or replacement of the
file changes at least one of them and the file is hashed again. Delete the stamp to force a check.
Files given by path (``checkpoint=PATH``) are never checked or stamped: they are the user's choice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .._utils import atomic_write_text, cache_dir
from ..download import DownloadError, OfflineError, is_offline, sha256sum
from ..download import download as _download_file

__all__ = [
    "REGISTRY",
    "ManualDownloadError",
    "WeightSpec",
    "WeightVerificationError",
    "get_spec",
    "list_weights",
    "md5sum",
    "verify_file",
    "weight_path",
    "weights_dir",
]


class ManualDownloadError(FileNotFoundError):
    """A weight file is missing and has no direct URL: its message says how to get it by hand."""


class WeightVerificationError(DownloadError):
    """A weight file does not match its registered checksum. A bad download is removed; a file
    that was already at the cache path is kept (the message says how to use it anyway)."""


@dataclass(frozen=True)
class WeightSpec:
    """One checkpoint file: where it comes from and how to recognise the right bytes.

    ``sha256``/``md5`` are full hex digests; ``sha256_prefix`` is a leading part of the SHA-256
    (some projects put one in the file name). ``manual`` holds instructions for files that can only
    be fetched by hand (no ``urls``).
    """

    name: str
    filename: str
    urls: list[str] = field(default_factory=list)
    sha256: str | None = None
    sha256_prefix: str | None = None
    size: int | None = None
    description: str = ""
    licence: str = ""
    manual: str | None = None
    md5: str | None = None
    arch: str | None = None  # the architecture the weights are for (e.g. "vit_b")


_SAM_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM_LICENCE = "Apache-2.0 (segment-anything, Meta AI)"

REGISTRY: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in [
        WeightSpec(
            name="sam_vit_b",
            filename="sam_vit_b_01ec64.pth",
            urls=[_SAM_BASE + "sam_vit_b_01ec64.pth"],
            md5="01ec64d29a2fca3f0661936605ae66f8",
            description="Segment Anything, ViT-B image encoder (~375 MB)",
            licence=_SAM_LICENCE,
            arch="vit_b",
        ),
        WeightSpec(
            name="sam_vit_l",
            filename="sam_vit_l_0b3195.pth",
            urls=[_SAM_BASE + "sam_vit_l_0b3195.pth"],
            md5="0b3195507c641ddb6910d2bb5adee89c",
            description="Segment Anything, ViT-L image encoder (~1.2 GB)",
            licence=_SAM_LICENCE,
            arch="vit_l",
        ),
        WeightSpec(
            name="sam_vit_h",
            filename="sam_vit_h_4b8939.pth",
            urls=[_SAM_BASE + "sam_vit_h_4b8939.pth"],
            md5="4b8939a88964f0f4ff5f5b2642c598a6",
            description="Segment Anything, ViT-H image encoder (~2.4 GB)",
            licence=_SAM_LICENCE,
            arch="vit_h",
        ),
        WeightSpec(
            name="medsam",
            filename="medsam_vit_b.pth",
            urls=[],
            description="MedSAM (Ma et al., Nature Communications 2024): SAM ViT-B fine-tuned on "
            "1.5M medical image-mask pairs (~375 MB)",
            licence="Apache-2.0 (bowang-lab/MedSAM)",
            manual=(
                "MedSAM's authors share medsam_vit_b.pth through a Google Drive folder linked from "
                "https://github.com/bowang-lab/MedSAM#model-training (README, 'Get Started'): "
                "https://drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN . "
                "Download medsam_vit_b.pth from there in a browser (Google Drive has no stable "
                "direct link)"
            ),
            arch="vit_b",
        ),
    ]
}


def list_weights() -> list[WeightSpec]:
    """All registered weight files, in registry order."""
    return list(REGISTRY.values())


def get_spec(name: str) -> WeightSpec:
    """The :class:`WeightSpec` registered as ``name`` (a clear KeyError listing the names otherwise)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"no weight file registered as {name!r}; known: {', '.join(REGISTRY)}"
        ) from None


def weights_dir(cache: str | os.PathLike | None = None) -> Path:
    """The folder holding weight files: ``cache`` if given, else ``cache_dir() / "weights"``."""
    return Path(cache).expanduser() if cache is not None else cache_dir() / "weights"


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file (SAM's published checksums are MD5)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, spec: WeightSpec) -> str | None:
    """None if ``path`` matches every checksum/size ``spec`` gives; else what is wrong."""
    path = Path(path)
    actual_size = path.stat().st_size
    if spec.size is not None and actual_size != spec.size:
        return f"size is {actual_size} bytes, expected {spec.size}"
    if spec.sha256 is not None or spec.sha256_prefix is not None:
        digest = sha256sum(path)
        if spec.sha256 is not None and digest != spec.sha256.lower():
            return f"SHA-256 is {digest}, expected {spec.sha256}"
        if spec.sha256_prefix is not None and not digest.startswith(spec.sha256_prefix.lower()):
            return f"SHA-256 is {digest}, expected one starting with {spec.sha256_prefix}"
    if spec.md5 is not None:
        digest = md5sum(path)
        if digest != spec.md5.lower():
            return f"MD5 is {digest}, expected {spec.md5}"
    return None


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _expected(spec: WeightSpec) -> str:
    """The checksum a stamp vouches for (a stamp for other expectations does not count)."""
    return spec.sha256 or spec.md5 or spec.sha256_prefix or f"size={spec.size}"


def _stamp(path: Path, spec: WeightSpec) -> str:
    st = path.stat()
    return f"{_expected(spec)} {st.st_size} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}\n"


def _is_stamped(path: Path, spec: WeightSpec) -> bool:
    """True if ``path`` verified against ``spec`` before and has not changed since (skips
    re-hashing GBs; see the module docstring for what "changed" covers)."""
    stamp = _stamp_path(path)
    try:
        return stamp.read_text() == _stamp(path, spec)
    except OSError:
        return False


def _write_stamp(path: Path, spec: WeightSpec) -> None:
    atomic_write_text(_stamp_path(path), _stamp(path, spec))


def _load_name(spec: WeightSpec) -> str:
    """The name ``load_sam`` knows this file by (``sam_vit_b`` -> ``vit_b``)."""
    return spec.name.removeprefix("sam_")


def _aside(dest: Path) -> Path:
    """A free name beside ``dest`` for a user's file that is moved out of the way."""
    for i in range(1000):
        tag = ".not-verified" + (f"-{i}" if i else "")
        candidate = dest.with_name(f"{dest.stem}{tag}{dest.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free name beside {dest} to keep the file that is there")


def _mismatch_message(spec: WeightSpec, dest: Path, problem: str) -> str:
    name = _load_name(spec)
    return (
        f"{dest}: this is not the official {spec.name!r} weight file ({problem}). It was left "
        "where it is.\n"
        f"To use this file anyway (a fine-tuned or converted copy): "
        f"load_sam({name!r}, checkpoint={str(dest)!r}), or on the command line "
        f"--sam {name} --sam-checkpoint {dest}.\n"
        "To get the official file: move this one elsewhere (or rename it) and run again with "
        "network access, or put the official file there by hand."
    )


def _has_checks(spec: WeightSpec) -> bool:
    return any(v is not None for v in (spec.sha256, spec.sha256_prefix, spec.md5, spec.size))


def _manual_message(spec: WeightSpec, dest: Path, why: str) -> str:
    lines = [f"Cannot get the {spec.name!r} weights ({spec.filename}): {why}."]
    if spec.manual:
        lines.append(spec.manual.rstrip(".") + ",")
    if spec.urls:
        lines.append("Fetch it on a machine with network access from:")
        lines += [f"    {u}" for u in spec.urls]
    lines.append(f"and put it at:\n    {dest}")
    if spec.md5:
        lines.append(f"Expected MD5: {spec.md5}  (check with: md5sum {spec.filename})")
    if spec.sha256:
        lines.append(f"Expected SHA-256: {spec.sha256}")
    lines.append(
        "(Or pass the file's path directly, e.g. load_sam(..., checkpoint=PATH); "
        "MEDCLIPSAM_CACHE moves the cache folder.)"
    )
    return "\n".join(lines)


def weight_path(
    name: str,
    cache: str | os.PathLike | None = None,
    download: bool = True,
    *,
    spec: WeightSpec | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 30,
    backoff: float = 1.0,
) -> Path:
    """Return the local path of weight file ``name``, downloading and verifying it if missing.

    ``spec`` overrides the registry entry (another mirror, or a test server). The file lives at
    ``weights_dir(cache) / spec.filename``. A file already there is verified once against the
    registered checksums (a ``.verified`` stamp beside it avoids re-hashing gigabytes on each
    load; see the module docstring). A download goes to a staging name and is moved into place
    only after every check passes: a wrong download is deleted and raises
    :class:`WeightVerificationError`.

    A file already at the path that does not verify is never deleted: offline (or with
    ``download=False``, or no URL) :class:`WeightVerificationError` says what differs and how to
    use it anyway; online, the official file is downloaded beside it and, once verified, takes
    its place while the user's file is moved to ``<stem>.not-verified<suffix>`` (a warning
    names it); if the download fails, the user's file stays where it was.

    Raises :class:`~medclipsam.download.OfflineError` (offline, or no server answered) and
    :class:`ManualDownloadError` (``download=False``, or a file with no direct URL); both messages
    say what to fetch and the exact path to put it at.
    """
    spec = spec if spec is not None else get_spec(name)
    dest = (weights_dir(cache) / spec.filename).absolute()

    mismatch = None  # what is wrong with a file that was already there (kept in any case)
    if dest.exists():
        if not _has_checks(spec) or _is_stamped(dest, spec):
            return dest
        problem = verify_file(dest, spec)
        if problem is None:
            _write_stamp(dest, spec)
            return dest
        mismatch = _mismatch_message(spec, dest, problem)
        if not download or not spec.urls or is_offline():
            why = "the file in the cache is not the expected one"
            raise WeightVerificationError(
                mismatch + "\n" + _manual_message(spec, dest, why)
            )

    if not spec.urls:
        raise ManualDownloadError(_manual_message(spec, dest, "it has no direct download URL"))
    if not download:
        raise ManualDownloadError(
            _manual_message(spec, dest, "it is not in the cache and download=False")
        )

    staging = dest.with_name(f".{dest.name}.unverified")
    try:
        _download_file(
            spec.urls,
            staging,
            sha256=spec.sha256,
            size=spec.size,
            progress=progress,
            retries=retries,
            timeout=timeout,
            backoff=backoff,
        )
    except OfflineError as e:
        first = str(e).splitlines()[0]
        why = first.split(": ", 1)[-1].rstrip(".")
        msg = _manual_message(spec, dest, why)
        raise OfflineError(mismatch + "\n" + msg if mismatch else msg) from None
    except DownloadError as e:
        if mismatch is None:
            raise
        raise DownloadError(f"{mismatch}\nDownloading the official file failed: {e}") from e
    problem = verify_file(staging, spec)
    if problem is not None:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        kept = f"; {dest} was left as it was" if mismatch else ""
        raise WeightVerificationError(
            f"downloaded {spec.filename} from {' / '.join(spec.urls)} is not the expected file "
            f"({problem}); it was deleted, nothing was added to {dest.parent}{kept}"
        )
    if mismatch is not None and dest.exists():
        keep = _aside(dest)
        os.replace(dest, keep)
        with contextlib.suppress(FileNotFoundError):
            _stamp_path(dest).unlink()
        warnings.warn(
            f"{dest} was not the official {spec.name!r} file; it was moved to {keep} (nothing "
            f"was deleted) and the official file downloaded in its place. To use your file: "
            f"load_sam({_load_name(spec)!r}, checkpoint={str(keep)!r}); delete it if you do "
            "not need it.",
            UserWarning,
            stacklevel=2,
        )
    os.replace(staging, dest)
    _write_stamp(dest, spec)
    return dest
