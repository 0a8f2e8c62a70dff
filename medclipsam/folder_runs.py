"""Segmenting a folder of images, resumably: masks, ``results.csv`` and ``run.json`` on disk.

::

    pipe.run_folder("images/", "breast tumor", "out/")    # MedCLIPSAM.run_folder calls run_folder here
    rows = read_results("out/results.csv")

:func:`run_folder` takes anything that segments one image at a time (a :class:`FolderSegmenter`:
:class:`~medclipsam.pipeline.MedCLIPSAM`, :class:`~medclipsam.text_baselines.Sam3TextBaseline`), so
resuming, sharding and the results file are written once for all of them.

What it promises on bad input and interruptions: an image that cannot be read or segmented becomes
a failed row of ``results.csv`` (``status`` ``failed``, the reason in ``error``), the run goes on and
warns with a summary at the end; ``strict=True`` stops at the first failure instead. Rows are
appended with one write each and flushed to disk, so a crash leaves no half row; a torn last row
(power loss, full disk) is dropped on resume and its image redone; stale temporary files of atomic
writes are removed on resume. Failed images are retried when a run resumes. Several processes
(torchrun) each take a share of the images and meet through ``torch.distributed`` (gloo) to merge
their part files into the one ``results.csv``.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ._utils import atomic_path, atomic_write_text, remove_stale_temporaries
from .data.datasets import broken_links, list_image_files, nfc
from .data.io import SUPPORTED_SUFFIXES, ImageReadError, file_stem, load_picture, write_mask
from .per_image import check_prompt, image_progress
from .viz import result_figure, save_figure

__all__ = ["RESULTS_COLUMNS", "FolderResult", "FolderSegmenter", "read_results", "run_folder"]

RESULTS_COLUMNS = (
    "id", "prompt", "mask_file", "sam_score", "mask_area", "n_boxes", "boxes", "flags",
    "height", "width", "t_saliency", "t_sam_prompts", "t_sam_embed", "t_sam_decode", "t_total",
    "status", "error",
)
"""The columns of ``results.csv`` (a row: :meth:`~medclipsam.pipeline.SegmentationResult.row`)."""


class FolderResult(Protocol):
    """What :func:`run_folder` reads of one image's result (a
    :class:`~medclipsam.pipeline.SegmentationResult`): its mask and its ``results.csv`` row."""

    mask: np.ndarray

    def row(self, mask_file: str = "") -> dict: ...


class FolderSegmenter(Protocol):
    """What :func:`run_folder` needs of a model: a ``config`` with ``seed``, ``for_task(task)`` and
    ``to_dict()``, and ``segment_one`` (one image, one prompt, that configuration, the image's id
    and seed) returning a :class:`FolderResult`."""

    config: Any

    def segment_one(self, image: Any, prompt: str, config: Any, name: str,
                    seed: int) -> FolderResult: ...


def run_folder(
    segmenter: FolderSegmenter,
    images_dir: str | Path,
    prompt: str,
    out_dir: str | Path,
    *,
    task: str | None = None,
    resume: bool = True,
    overlays: bool = False,
    limit: int | None = None,
    stems: Sequence[str] | None = None,
    progress: bool = True,
    strict: bool = False,
    shard: tuple[int, int] | None = None,
) -> list[dict]:
    """Segment every image of ``images_dir`` (not recursive), writing as it goes:
    ``out_dir/masks/<stem>.png`` (0/255), one row per image in ``out_dir/results.csv`` and
    ``out_dir/run.json`` (prompt and settings). With ``resume`` (default) images that already
    have a row and a mask are skipped, so an interrupted run continues where it stopped;
    a run with other settings in the same ``out_dir`` is refused. ``stems`` restricts the run
    to those file stems (e.g. one split).

    An image that cannot be read or segmented (a truncated or fake file, a broken link)
    becomes a row with ``status`` ``"failed"`` and the reason in ``error``, and the run goes
    on; a warning at the end names the failed files. ``strict=True`` stops at the first
    failure instead (its row is written first). Failed images are retried on resume.
    A file whose format is not supported (``scan.gif``, ``notes.txt``) is not read but gets
    a row too (id: its file name, ``status`` ``"skipped: unsupported format .gif"``), with a
    warning naming it, so no file is left out in silence (not with ``stems``: a subset).
    Rows flag an empty mask (``empty_mask``) and one covering the image
    (``mask_covers_image``), see :meth:`~medclipsam.pipeline.SegmentationResult.row`. ``results.csv`` stays in
    order of id, also after a resume that redid some images.
    Returns all rows (``status`` ``"ok"``, ``"failed"`` or ``"skipped: ..."``), sorted by id.

    Several processes (``torchrun --nproc_per_node N``, one per GPU): each process takes
    every N-th of the sorted stems (``shard=(rank, N)``; default: ``RANK`` and ``WORLD_SIZE``
    from torchrun), appends its rows to ``results.part<rank>.csv``, and at the end rank 0
    merges them into the one ``results.csv`` (the processes meet through
    ``torch.distributed``, gloo, which is initialised here when torchrun has not done it).
    Each returns the rows of its own share. An interrupted sharded run resumes as any other
    (with any number of processes): the part files are read as finished rows."""
    check_prompt(prompt)
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    by_stem, stems, skipped = _folder_files(images_dir, prompt, stems, limit)
    cfg = segmenter.config.for_task(task)
    rank, world = _shard(shard)
    if rank == 0:
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir, out_dir / "masks", out_dir / "overlays")
    _barrier(world)
    settings = {"prompt": prompt, "task": task, "config": cfg.to_dict()}
    run_file, csv_path = out_dir / "run.json", out_dir / "results.csv"
    kept = _finished_rows(out_dir, settings, stems, resume)
    _barrier(world)  # every rank has read the old state before rank 0 rewrites it
    if rank == 0:
        atomic_write_text(run_file, json.dumps(settings, indent=1) + "\n")
        # every finished row (also of other stems) and the skipped files, in order of id
        _write_rows(csv_path, sorted([*kept.values(), *skipped], key=lambda r: r["id"]))
        for part in _part_files(out_dir):  # merged into results.csv just now
            part.unlink()
    _barrier(world)
    stems = stems[rank::world]  # this process's share (all of them without torchrun)
    if world > 1:
        csv_path = out_dir / f"results.part{rank}.csv"  # merged by rank 0 at the end
        _write_rows(csv_path, [])  # its header
    rows = [kept[s] for s in stems if s in kept] + (skipped if rank == 0 else [])
    todo = [s for s in stems if s not in kept]
    failed: list[dict] = []
    for stem in image_progress(todo, len(todo), progress and rank == 0):
        path = by_stem[stem][0]
        # the seed depends on the file, not on its position, so subsets give the same masks
        seed = cfg.seed + zlib.crc32(stem.encode()) % 2**31
        try:
            res = segmenter.segment_one(path, prompt, cfg, stem, seed=seed)
            mask_file = f"masks/{stem}.png"
            write_mask(out_dir / mask_file, res.mask)
            if overlays:
                _save_overlay(out_dir / "overlays" / f"{stem}.png", res, path)
            row = res.row(mask_file)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the folder
            row = _failed_row(stem, prompt, path, exc)
            failed.append(row)
            rows.append(row)
            _append_row(csv_path, row)
            if strict:
                if isinstance(exc, (ImageReadError, OSError)):
                    raise
                raise ValueError(f"{path}: {type(exc).__name__}: {exc}") from exc
            continue
        rows.append(row)
        _append_row(csv_path, row)
    if world > 1:
        _barrier(world)  # every share done: one results.csv
        if rank == 0:
            merged = {r["id"]: r for r in read_results(out_dir / "results.csv")}
            for part in _part_files(out_dir):
                merged.update({r["id"]: r for r in read_results(part)})
            _write_rows(out_dir / "results.csv", sorted(merged.values(), key=lambda r: r["id"]))
            for part in _part_files(out_dir):
                part.unlink()
        _barrier(world)
        csv_path = out_dir / "results.csv"
    elif todo:  # appended after the kept rows (a resume) and the skipped files: reorder
        _sort_rows(csv_path)
    if skipped:
        names = ", ".join(r["id"] for r in skipped[:5])
        more = f", ... and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"{len(skipped)} file(s) in {images_dir} skipped, unsupported format "
                      f"or subfolder (status 'skipped: ...' in {csv_path}): {names}{more}; "
                      f"supported: {', '.join(SUPPORTED_SUFFIXES)}", UserWarning, stacklevel=2)
    if failed:
        shown = "; ".join(f"{r['id']}: {r['error']}" for r in failed[:5])
        more = f"; ... and {len(failed) - 5} more" if len(failed) > 5 else ""
        warnings.warn(f"{len(failed)} of {len(todo)} image(s) failed and were skipped "
                      f"(status 'failed' in {csv_path}): {shown}{more}", UserWarning, stacklevel=2)
    return sorted(rows, key=lambda r: r["id"])


# --------------------------------------------------------------------------------------------
# folder runs: what is finished, and several processes (torchrun)


def _folder_files(images_dir: Path, prompt: str, stems: Sequence[str] | None,
                  limit: int | None) -> tuple[dict[str, list[Path]], list[str], list[dict]]:
    """The files of a folder run: the paths by stem (broken links included: they fail with a
    row), the sorted stems to segment (``stems`` if given, at most ``limit``) and the rows of the
    files in an unsupported format."""
    by_stem, unsupported = list_image_files(images_dir)
    for link in broken_links(images_dir):  # a failed row each, not silently left out
        by_stem.setdefault(nfc(file_stem(link)), []).append(link)
    dup = sorted(s for s, paths in by_stem.items() if len(paths) > 1)
    if dup:
        raise ValueError(f"{images_dir}: several files share a stem ({', '.join(dup[:5])}); rename them")
    if stems is not None:
        stems = [nfc(s) for s in stems]  # as list_image_files names them
        missing = sorted(set(stems) - set(by_stem))
        if missing:
            raise FileNotFoundError(
                f"{images_dir}: no image for {len(missing)} requested stem(s): {', '.join(missing[:5])}"
            )
        by_stem = {k: by_stem[k] for k in stems}
        unsupported = []  # a chosen subset: the other files are not this run's business
    skipped = [_skipped_row(images_dir / name, prompt) for name in unsupported]
    stems = sorted(by_stem)[:limit] if limit else sorted(by_stem)
    if not stems:
        raise FileNotFoundError(f"{images_dir}: no image files found")
    return by_stem, stems, skipped


def _finished_rows(out_dir: Path, settings: dict, stems: Sequence[str], resume: bool) -> dict[str, dict]:
    """The rows of ``out_dir``'s earlier run that need not be redone (read from ``results.csv``
    and the part files of an interrupted sharded run); refuses a run with other settings."""
    run_file, csv_path = out_dir / "run.json", out_dir / "results.csv"
    kept: dict[str, dict] = {}
    sources = [csv_path, *_part_files(out_dir)] if csv_path.exists() else _part_files(out_dir)
    if not (run_file.exists() and sources):
        return kept
    previous = json.loads(run_file.read_text())
    if previous != json.loads(json.dumps(settings)):
        raise ValueError(
            f"{out_dir} holds a run with other settings ({run_file}); use another out_dir or delete it"
        )
    if not resume:
        return kept
    wanted = set(stems)
    for source in sources:
        for r in read_results(source):
            if r.get("status", "").startswith("skipped"):
                continue  # unsupported files are listed afresh by every run
            ok = r.get("status", "ok") in ("ok", "") and r.get("mask_file")
            if ok and (out_dir / r["mask_file"]).is_file():
                kept[r["id"]] = r
            elif not ok and r["id"] not in wanted:
                kept[r["id"]] = r  # another subset's failure: keep it on record
    return kept


def _part_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("results.part*.csv"))


def _shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """(rank, world size): ``shard`` as given, else torchrun's ``RANK``/``WORLD_SIZE`` (0, 1
    without torchrun). With more than one process the gloo process group is started if needed."""
    if shard is None:
        shard = (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    rank, world = int(shard[0]), int(shard[1])
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    if world > 1 and not torch.distributed.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError(
                f"shard {shard}: several processes need torchrun (or MASTER_ADDR/MASTER_PORT) "
                "to meet at the end and merge results.csv"
            )
        torch.distributed.init_process_group(
            "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(hours=24)
        )
    return rank, world


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _write_rows(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RESULTS_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _append_row(path: Path, row: dict) -> None:
    """Append one row with a single ``write`` and flush it to disk: a crash (or a kill) leaves
    either the whole row or none of it; power loss may still tear it (see :func:`read_results`)."""
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=RESULTS_COLUMNS, extrasaction="ignore").writerow(row)
    data = buf.getvalue().encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _sort_rows(path: Path) -> None:
    """Rewrite ``path`` (a results table) in order of id if it is not (atomically)."""
    table = read_results(path)
    ids = [r["id"] for r in table]
    if ids != sorted(ids):
        _write_rows(path, sorted(table, key=lambda r: r["id"]))


def _skipped_row(path: Path, prompt: str) -> dict:
    """The row of a file a folder run does not read: its format is not supported."""
    if path.is_dir():
        return {"id": path.name, "prompt": prompt, "mask_file": "", "flags": "",
                "status": "skipped: subfolder",
                "error": f"{path.name}: a subfolder, not searched (a folder run reads the files "
                         f"directly in {path.parent}); run the command on it as well, or move its "
                         "images up"}
    suffix = path.suffix.lower() or "(no suffix)"
    return {"id": path.name, "prompt": prompt, "mask_file": "", "flags": "",
            "status": f"skipped: unsupported format {suffix}",
            "error": f"{path.name}: not read, {suffix} is not a supported image format "
                     f"({', '.join(SUPPORTED_SUFFIXES)}); convert it (e.g. to .png) to include it"}


def _failed_row(stem: str, prompt: str, path: Path, exc: BaseException) -> dict:
    if isinstance(exc, ImageReadError):
        reason = exc.problem
    elif type(exc).__module__.startswith("medclipsam."):  # the package's own words
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return {"id": stem, "prompt": prompt, "mask_file": "", "flags": "", "status": "failed",
            "error": " ".join(f"{path.name}: {reason}".split())}


def read_results(path: str | Path) -> list[dict]:
    """The rows of a ``results.csv`` written by :func:`run_folder`, dropping (with a
    warning) a torn last row (no final newline: power loss, full disk) and any row whose field
    count does not match the header; their images are then redone by a resumed run."""
    path = Path(path)
    # NUL bytes: the zero-filled tail some file systems leave after a power loss
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\x00", "")
    records = list(csv.reader(io.StringIO(text, newline="")))
    if not records:
        return []
    header, body = records[0], records[1:]
    dropped: list[str] = []
    if body and not text.endswith(("\n", "\r")):
        dropped.append(f"torn last row {body.pop()[:1]}")
    rows = []
    for rec in body:
        if len(rec) != len(header) or not rec[0]:
            dropped.append(f"row {rec[:1]} with {len(rec)} of {len(header)} fields")
            continue
        rows.append(dict(zip(header, rec)))
    if dropped:
        warnings.warn(f"{path}: dropped {'; '.join(dropped)}; those images are redone",
                      UserWarning, stacklevel=3)
    return rows


def _save_overlay(path: Path, res: FolderResult, image: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(result_figure(load_picture(image), res), path)
