"""Small shared helpers: atomic writes, safe archive extraction, device choice, seeding.

Everything here is upstream of every other module, so it imports nothing from the package. The
module is imported by torch-free paths (the data layer, downloads, the environment report), so the
few helpers that need torch import it themselves.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import re
import stat
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

__all__ = [
    "UnsafeArchiveError",
    "atomic_path",
    "checkpoint_error_detail",
    "progress_wanted",
    "remove_stale_temporaries",
    "atomic_write_bytes",
    "atomic_write_text",
    "cache_dir",
    "get_device",
    "outside_stacklevel",
    "safe_extract",
    "seed_everything",
    "warmup_cosine",
]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file, and a failure leaves nothing behind.
    ``suffix`` (default: ``path``'s own suffix) lets writers that choose a format from the file
    name (PIL, nibabel) see the right extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


# What atomic_path leaves behind when a process is killed inside the block:
# ".<stem>.<8 random characters>.part<suffix>" (tempfile.mkstemp's names).
_TEMPORARY = re.compile(r"^\..*\.[A-Za-z0-9_]{8}\.part(\.[^/]*)?$")


def remove_stale_temporaries(*folders: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` leaves when a run is killed mid-write
    (``.<name>.<random>.part<suffix>``) in ``folders`` (not recursive; missing folders are
    skipped). Call it when a run (re)starts in a folder it owns. Returns what was removed."""
    removed: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if _TEMPORARY.match(entry.name) and (entry.is_file() or entry.is_symlink()):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def foreign_weight_file(path: str | os.PathLike) -> str | None:
    """What a weight file that torch cannot read really is, judged from its first bytes, with
    what to do: a Git LFS pointer, an HTML page, or bytes that are no PyTorch file at all (torch
    writes a zip archive, old versions a pickle). None when it starts like a PyTorch file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
        size = os.path.getsize(path)
    except OSError:
        return None
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        return (f"a Git LFS pointer file ({size} bytes), not the weights: the repository was cloned "
                "without its large files; run `git lfs pull` there (after `git lfs install`) or "
                "download the file itself again")
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html")) or (text.startswith(b"<") and b"<html" in text):
        return (f"an HTML web page ({size} bytes), not a weight file: the download saved a page (a "
                "login, error or 'confirm download' page); download it again from the direct link")
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        return ("not a PyTorch file (torch.save writes a zip archive, older versions a pickle; "
                "this file is neither): it is damaged or another kind of file; download or save "
                "it again")
    return None


def checkpoint_error_detail(exc: BaseException, path: str | os.PathLike | None = None) -> str:
    """Why ``torch.load(weights_only=True)`` refused or failed, for an error message.

    torch's own text for a refused file advises ``weights_only=False`` ("will likely succeed"):
    that runs whatever code the file holds, the wrong advice for a file one does not trust. This
    says what to do instead and quotes only torch's diagnosis; other errors are quoted
    (shortened). A file refused for holding pickled objects starts with ``"it holds pickled"``.
    With ``path``, a file that is no PyTorch file (an LFS pointer, a web page, other bytes) is
    called what it is instead of quoting the unpickler (:func:`foreign_weight_file`)."""
    text = " ".join(str(exc).split())
    foreign = foreign_weight_file(path) if path is not None else None
    if foreign is not None:
        return f"torch.load(weights_only=True) cannot read it: it is {foreign}"
    if type(exc).__name__ != "UnpicklingError" and "Weights only load failed" not in text:
        return f"{type(exc).__name__}: {text[:300]}"
    inner = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else ""
    for cut in (" Please use", " Check the documentation"):
        inner = inner.split(cut, 1)[0]
    inner = inner.strip()[:200]
    advice = (
        "Do not load a file you do not trust with weights_only=False (that runs its code); ask "
        "its provider for a plain state_dict (tensors only) or a .safetensors file. If you made "
        "the file yourself, re-save just its tensors (torch.save(model.state_dict(), path))"
    )
    if "Unsupported global" in inner:
        return (
            "it holds pickled Python objects, which torch.load(weights_only=True) refuses because "
            f"loading them can run arbitrary code ({inner}). {advice}"
        )
    return (
        f"torch.load(weights_only=True) cannot read it ({inner or 'not a weights file'}): it is "
        f"corrupt, not a PyTorch file, or a pickle of Python objects. {advice}"
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temporary file, then rename)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _check_member(dest: Path, name: str, archive: Path) -> Path:
    pure = PurePosixPath(name.replace("\\", "/"))
    target = (dest / pure).resolve()
    if pure.is_absolute() or (target != dest and dest not in target.parents):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} would be written outside {dest}; refusing to extract"
        )
    return target


def _check_layout(infos, targets: list[Path], archive: Path) -> None:
    """Refuse an archive in which one member is a file and another needs that path as a folder
    (or one path appears twice as different kinds), before anything is written."""
    files = {t for i, t in zip(infos, targets) if not i.is_dir()}
    folders = {t for i, t in zip(infos, targets) if i.is_dir()}
    for i, t in zip(infos, targets):
        for parent in t.parents:
            if parent in files:
                raise UnsafeArchiveError(
                    f"{archive}: member {i.filename!r} needs {parent.name!r} to be a folder, but "
                    "the archive also holds a file of that name; the archive is malformed"
                )
    clash = files & folders
    if clash:
        raise UnsafeArchiveError(
            f"{archive}: {sorted(str(c) for c in clash)[0]!r} is both a file and a folder in "
            "the archive; the archive is malformed"
        )


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract a zip or tar archive into ``dest``, refusing members that escape it.

    Every member is checked *before* anything is written, so a malicious archive leaves the
    destination untouched. Links in tar archives are refused too. Returns the extracted files.
    """
    archive = Path(archive)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    written: list[Path] = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            targets = [_check_member(dest, info.filename, archive) for info in infos]
            for info in infos:
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UnsafeArchiveError(
                        f"{archive}: member {info.filename!r} is a symbolic link; refusing to "
                        "extract (links could point outside the folder); extract it yourself if "
                        "you trust it, or ask for an archive without links"
                    )
            _check_layout(infos, targets, archive)
            for info, target in zip(infos, targets):
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, atomic_path(target) as tmp:
                    with open(tmp, "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                written.append(target)
        return written
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                _check_member(dest, m.name, archive)
                if m.issym() or m.islnk() or m.isdev():
                    raise UnsafeArchiveError(
                        f"{archive}: member {m.name!r} is a link or device; refusing to extract"
                    )
            for m in members:
                target = _check_member(dest, m.name, archive)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                src = tf.extractfile(m)
                if src is None:
                    continue
                with src, atomic_path(target) as tmp:
                    with open(tmp, "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                written.append(target)
        return written
    raise ValueError(f"{archive}: not a zip or tar archive (or the file is corrupt)")


def cache_dir() -> Path:
    """The user folder for downloaded weights and data (``$MEDCLIPSAM_CACHE`` overrides it)."""
    env = os.environ.get("MEDCLIPSAM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "medclipsam"


def get_device(device: str | None = "auto"):
    """Pick a torch device: ``"auto"`` means cuda, then mps, then cpu; anything else is used as given."""
    import torch

    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """Learning-rate factor at optimiser step ``step``: linear warm-up over ``warmup`` steps
    (``(step + 1) / warmup``), then a cosine decay from 1 to ``floor`` at step ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if installed) torch for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the legacy global generator is what third-party code uses
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency, but keep this light
        return
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The Python, NumPy (global) and torch (CPU, and CUDA once initialised) random states, as
    tensors and plain values, so a checkpoint holding them loads with ``weights_only=True``."""
    import torch

    np_state = np.random.get_state()  # noqa: NPY002 - the global generator is what we restore
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _as_tuples(x):
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only where CUDA is available)."""
    import torch

    random.setstate(_as_tuples(state["python"]))
    s = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        ("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check; else the avx512_bf16/amx_bf16
    flags in /proc/cpuinfo). Decides bf16 autocast in toy training and gScoreCAM's fast mode."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - older/other builds: read the CPU flags instead
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def progress_wanted(show: bool) -> bool:
    """``show``, unless the environment sets ``TQDM_DISABLE`` (tqdm's own switch, which its notebook
    widget ignores): an executed copy of a lesson then keeps no frozen bar."""
    return bool(show) and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")


_PACKAGE = Path(__file__).resolve().parent


def outside_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the calling function that attributes the
    warning to the first caller outside this package, however many package functions lie between
    (``finetune`` called directly, or through ``compare_losses``): the warning then names the
    user's own line, not a file of the installed package."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and _in_package(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level


def _in_package(filename: str) -> bool:
    return Path(filename).resolve().is_relative_to(_PACKAGE)
