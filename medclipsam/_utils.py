"""Small shared helpers: atomic writes, safe archive extraction, device choice, seeding.

Everything here is upstream of every other module, so it imports nothing from the package. The
module is imported by torch-free paths (the data layer, downloads, the weight registry), so the few
helpers that need torch import it themselves.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

__all__ = [
    "UnsafeArchiveError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "cache_dir",
    "get_device",
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
