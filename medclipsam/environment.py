"""What a lesson runs on: package versions, the world, the device, CPU threads and optional extras.

::

    from medclipsam import show_environment
    show_environment(world="offline", device="auto")   # prints the report (as MONAI's print_config)

Every lesson calls it in the cell after its parameters, so an executed notebook, a bug report or a
student's screenshot says which versions, which device and which extras produced its outputs (a
lesson whose coarse masks say "CRF" ran with ``pydensecrf2``; without it the pipeline falls back
to k-means). Versions come from the installed distributions' metadata, so nothing heavy is
imported for them; only the device and thread count import torch, which every lesson needs anyway.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from ._utils import cache_dir, get_device
from .download import is_offline

__all__ = [
    "CORE_PACKAGES",
    "EXTRAS",
    "environment_report",
    "format_environment",
    "show_environment",
]

#: Distributions reported under "packages" (PyPI names).
CORE_PACKAGES = (
    "medclipsam",
    "torch",
    "torchvision",
    "open_clip_torch",
    "segment-anything",
    "transformers",
    "monai",
    "numpy",
    "pydicom",
    "matplotlib",
)

#: Optional extras: name -> (modules to look for, their distributions, what they are for, how to
#: install them). An extra is available when any one of its modules is importable.
EXTRAS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str, str]] = {
    "crf": (
        ("pydensecrf",),
        ("pydensecrf2",),
        'the dense-CRF coarse mask (postprocess="crf", the pipeline default; without it: k-means)',
        'pip install "medclipsam[crf]"',
    ),
    "widgets": (
        ("ipywidgets",),
        ("ipywidgets",),
        "the prompt explorer (lesson 06) and progress bars in notebooks",
        'pip install "medclipsam[notebooks]"',
    ),
    "clicks": (
        ("ipyevents",),
        ("ipyevents",),
        "clicking points and dragging boxes in the explorer",
        'pip install "medclipsam[notebooks]"',
    ),
    "dicom-decoders": (
        ("pylibjpeg", "gdcm"),
        ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "python-gdcm"),
        "compressed DICOM (JPEG lossless, JPEG-LS, JPEG 2000) beyond what Pillow decodes",
        'pip install "medclipsam[dicom]" (or python-gdcm)',
    ),
    "papermill": (
        ("papermill",),
        ("papermill",),
        "running the lessons headless (tests, scripts/execute_lessons.py)",
        'pip install "medclipsam[notebooks]"',
    ),
}

_WORLDS = {
    "offline": "toy CLIP + LiteMedSAM (a real medical SAM) on phantom images, no download (CPU is enough)",
    "real": "BiomedCLIP + SAM/MedSAM and the public data sets (downloads once; a GPU helps)",
}


#: How the report prints each kind of install (``environment_report()["medclipsam_install"]``).
_INSTALL_WORDS = {
    "site-packages": "installed in site-packages",
    "source checkout": "from a source checkout",
    "other folder": "from a folder outside site-packages",
}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or half-installed package
        return False


def _short(path: str | Path) -> str:
    """``path`` with the home folder written ``~`` (a report gets pasted and committed)."""
    text, home = str(path), str(Path.home())
    return "~" + text[len(home) :] if home not in ("", "/") and text.startswith(home) else text


def _install_kind(folder: Path) -> str:
    """Where this copy of the package was imported from, in words a report can show without the
    machine's folders: ``"site-packages"`` (an ordinary install), ``"source checkout"`` (an
    editable install or a checkout on ``sys.path``: edits to its files take effect) or
    ``"other folder"``."""
    if {"site-packages", "dist-packages"} & set(folder.parts):
        return "site-packages"
    if (folder.parent / "pyproject.toml").is_file():
        return "source checkout"
    return "other folder"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _device_report(device: str | None) -> dict[str, Any]:
    """What ``device`` (``"auto"`` or None: cuda, then mps, then cpu) resolves to, with torch's
    build and thread count."""
    asked = "auto" if device is None else str(device)
    out: dict[str, Any] = {
        "asked": asked,
        "device": None,
        "detail": "",
        "torch_threads": None,
        "cuda_build": None,
    }
    try:
        import torch
    except ImportError:
        out["detail"] = "torch is not installed"
        return out

    out["cuda_build"] = torch.version.cuda
    out["torch_threads"] = torch.get_num_threads()
    try:
        dev = get_device(asked)
    except (RuntimeError, ValueError) as e:
        out["detail"] = f"cannot use {asked!r}: {e}"
        return out
    out["device"] = str(dev)
    if dev.type == "cuda":
        if torch.cuda.is_available():
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            out["detail"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
        else:
            out["detail"] = "asked for, but torch sees no CUDA device"
    elif dev.type == "mps":
        out["detail"] = "Apple GPU"
    elif asked == "auto":
        out["detail"] = "no CUDA or MPS device found"
    return out


def environment_report(world: str | None = None, device: str | None = "auto") -> dict[str, Any]:
    """The environment as a dict: ``world``, ``device`` (what ``device`` resolves to, with torch's
    thread count), ``cores``, ``python``, ``offline``, ``cache``, ``packages`` (distribution ->
    version or None), ``medclipsam_install`` (``"site-packages"``, ``"source checkout"`` or
    ``"other folder"``: what the printed report shows), ``medclipsam_path`` (the package's folder,
    home written ``~``; not printed, so executed notebooks do not carry the machine's folders) and
    ``extras`` (name -> ``{"available", "versions", "for", "install"}``)."""
    packages = {name: _version(name) for name in CORE_PACKAGES}
    packages["medclipsam"] = __version__  # this copy's, even when run from a checkout
    extras = {}
    for name, (modules, dists, purpose, install) in EXTRAS.items():
        extras[name] = {
            "available": any(_has_module(m) for m in modules),
            "versions": {d: v for d in dists if (v := _version(d)) is not None},
            "for": purpose,
            "install": install,
        }
    return {
        "world": world,
        "device": _device_report(device),
        "cores": _cores(),
        "python": f"{platform.python_version()} on {platform.system()} {platform.machine()}",
        "offline": is_offline(),
        "cache": _short(cache_dir()),
        "packages": packages,
        "medclipsam_install": _install_kind(Path(__file__).resolve().parent),
        "medclipsam_path": _short(Path(__file__).resolve().parent),
        "extras": extras,
    }


def format_environment(report: Mapping[str, Any]) -> str:
    """The report of :func:`environment_report` as aligned text."""
    lines = ["medclipsam environment"]

    def row(key: str, value: str) -> None:
        lines.append(f"  {key:<14}{value}")

    world = report.get("world")
    if world is not None:
        row("world", f"{world}: {_WORLDS.get(str(world), 'unknown world')}")
    dev = report["device"]
    shown = dev["device"] or "unavailable"
    if dev["asked"] != shown:
        shown += f" (asked for {dev['asked']!r})"
    if dev["detail"]:
        shown += f": {dev['detail']}"
    row("device", shown)
    threads = dev["torch_threads"]
    row(
        "CPU threads",
        (
            f"torch uses {threads} of {report['cores']} core(s)"
            if threads is not None
            else f"{report['cores']} core(s)"
        ),
    )
    row("python", report["python"])
    row(
        "offline",
        "yes (MEDCLIPSAM_OFFLINE / HF_HUB_OFFLINE): no downloads"
        if report["offline"]
        else "no (weights and data download on first use)",
    )
    row("weights", report["cache"])
    lines.append("packages")
    for name, version in report["packages"].items():
        text = version or "not installed"
        if name == "medclipsam":
            kind = report["medclipsam_install"]
            text += f"  ({_INSTALL_WORDS.get(kind, kind)})"
        elif name == "torch" and version:
            cuda = dev.get("cuda_build")
            text += f"  ({'CUDA ' + cuda if cuda else 'CPU-only'} build)"
        lines.append(f"  {name:<18}{text}")
    lines.append("optional extras")
    for name, extra in report["extras"].items():
        found = ", ".join(f"{d} {v}" for d, v in extra["versions"].items())
        if extra["available"]:
            state = f"yes ({found})" if found else "yes"
            lines.append(f"  {name:<16}{state}: {extra['for']}")
        else:
            lines.append(f"  {name:<16}no: {extra['for']}; {extra['install']}")
    return "\n".join(lines)


def show_environment(
    world: str | None = None, device: str | None = "auto", *, file: TextIO | None = None
) -> None:
    """Print the environment: versions, world, device, CPU threads and optional extras
    (:func:`environment_report` has it as a dict). ``device`` as the lessons take it
    (``"auto"``, ``"cpu"``, ``"cuda"``...)."""
    report = environment_report(world=world, device=device)
    print(format_environment(report), file=file if file is not None else sys.stdout)
