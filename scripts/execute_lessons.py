"""Execute the lessons with their default parameters into ``docs/lessons/``: copies with every
output and figure, so that a reader sees each lesson (on GitHub, in the README's table) without
running it.

Each lesson ``notebooks/NN_name.ipynb`` (00-07) runs under papermill with its defaults (no
parameter overridden: the offline world, the lesson's own sizes), in a fresh kernel and a fresh working
folder, with matplotlib's **inline** backend (``MPLBACKEND`` set for the kernel, whatever the
calling shell exports, e.g. CI's ``Agg``) so that every figure is saved as an image output, and
with progress bars off (``TQDM_DISABLE``: a saved widget bar shows as nothing). The copy records
in its metadata, under ``medclipsam``:

* ``source`` and ``source_sha256``: the jupytext source it was built from and that file's SHA-256,
  so ``--check`` and tests/test_executed_lessons.py tell a stale copy without running anything;
* ``wall_time_s``: how long the run took, with ``cpu_cores`` and ``torch_threads`` of the machine,
  and ``versions`` (medclipsam, torch) and ``executed_at`` (UTC).

Usage::

    python scripts/execute_lessons.py              # every lesson (the lab-sized defaults: minutes)
    python scripts/execute_lessons.py 01_data 04   # these lessons (name, stem, or number)
    python scripts/execute_lessons.py --stale      # only the copies that are missing or stale
    python scripts/execute_lessons.py --check      # run nothing; exit 1 naming what is stale

Run it after the last change to a lesson (and to what it shows: the package, the toy CLIP, LiteMedSAM),
then commit ``docs/lessons/``. A copy made before a change to the package alone still counts as
fresh: rerun the script whenever the outputs may have moved.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
LESSON_SOURCES = NOTEBOOKS / "src"
OUT = ROOT / "docs" / "lessons"
COMMAND = "python scripts/execute_lessons.py"
#: The matplotlib backend of the kernels: figures become image/png outputs.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
META_KEY = "medclipsam"
#: A code cell that draws: matplotlib's show/figure/subplots, or the package's figure helpers.
_DRAWS = re.compile(
    r"\bplt\.(show|figure|subplots|imshow)\(|\b(sample_grid|result_figure|save_figure)\("
)


def lessons() -> list[Path]:
    """The lesson notebooks ``notebooks/NN_*.ipynb``, in order."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def source_of(notebook: Path) -> Path:
    """The jupytext source a lesson notebook is built from."""
    return LESSON_SOURCES / f"{Path(notebook).stem}.py"


def copy_of(notebook: Path) -> Path:
    return OUT / Path(notebook).name


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _rel(path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def makes_figures(nb: nbformat.NotebookNode) -> bool:
    """Whether a notebook draws a figure in some code cell."""
    return any(c.cell_type == "code" and _DRAWS.search(c.source) for c in nb.cells)


def image_outputs(nb: nbformat.NotebookNode) -> int:
    """How many outputs of the executed notebook carry an image."""
    return sum(
        1
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if any(k.startswith("image/") for k in o.get("data", {}))
    )


def error_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """``"cell N: Ename: message"`` for every error output of an executed notebook."""
    return [
        f"cell {i}: {o.get('ename', 'Error')}: {str(o.get('evalue', '')).strip()}"
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def problems(notebook: Path) -> list[str]:
    """What is wrong with the executed copy of ``notebook`` (empty: fresh and complete)."""
    notebook = Path(notebook)
    out, src = copy_of(notebook), source_of(notebook)
    fix = f"run `{COMMAND} {notebook.stem}`"
    if not out.is_file():
        return [f"{_rel(out)} is missing: {fix}"]
    nb = nbformat.read(out, as_version=4)
    meta = nb.metadata.get(META_KEY, {})
    found = []
    if meta.get("source_sha256") != sha256(src):
        found.append(
            f"{_rel(out)} is stale: made from another version of {_rel(src)} (its recorded "
            f"SHA-256 {str(meta.get('source_sha256'))[:12]}..., the source's now "
            f"{sha256(src)[:12]}...): {fix}"
        )
    errors = error_outputs(nb)
    if errors:
        found.append(f"{_rel(out)} has error outputs ({'; '.join(errors)[:300]}): {fix}")
    unexecuted = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and c.source.strip() and c.get("execution_count") is None
    ]
    if unexecuted:
        found.append(f"{_rel(out)}: cells {unexecuted} were not executed: {fix}")
    if makes_figures(nbformat.read(notebook, as_version=4)) and image_outputs(nb) == 0:
        found.append(
            f"{_rel(out)} shows no figure although the lesson draws some (was it run with the "
            f"Agg backend?): {fix}"
        )
    return found


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("medclipsam", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def kernel_env(**values: str) -> Iterator[None]:
    """Set environment variables for the kernels started inside the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(notebook: Path, *, timeout: int = 1800, kernel_name: str = "python3") -> dict:
    """Run one lesson with its defaults into ``docs/lessons/``; returns its metadata record."""
    import papermill

    notebook = Path(notebook)
    src = source_of(notebook)
    if not src.is_file():
        raise FileNotFoundError(f"{_rel(notebook)} has no source {_rel(src)}")
    digest = sha256(src)
    out = copy_of(notebook)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The kernel inherits this process's environment: inline figures, no widget progress bars.
    with (
        kernel_env(MPLBACKEND=INLINE_BACKEND, TQDM_DISABLE="1"),
        tempfile.TemporaryDirectory(prefix=f"lesson-{notebook.stem}-") as work,
    ):
        tmp = Path(work) / notebook.name
        t0 = time.perf_counter()
        papermill.execute_notebook(
            str(notebook),
            str(tmp),
            parameters={},
            cwd=work,
            kernel_name=kernel_name,
            progress_bar=False,
            execution_timeout=timeout,
        )
        wall = time.perf_counter() - t0
        nb = nbformat.read(tmp, as_version=4)
    threads = None
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    record = {
        "source": _rel(src),
        "source_sha256": digest,
        "notebook": _rel(notebook),
        "parameters": "defaults",
        "wall_time_s": round(wall, 1),
        "cpu_cores": _cores(),
        "torch_threads": threads,
        "versions": _versions(),
        "executed_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": f"{COMMAND} {notebook.stem}",
    }
    nb.metadata[META_KEY] = record
    pm = nb.metadata.get("papermill", {})
    pm["input_path"], pm["output_path"] = _rel(notebook), _rel(out)  # no machine's temp paths
    errors = error_outputs(nb)
    if errors:  # papermill raises on an error; keep this in case a cell swallowed it
        raise RuntimeError(f"{_rel(notebook)}: error outputs: {errors}")
    try:
        from medclipsam._utils import atomic_path
    except ImportError:  # a checkout without the package installed
        sys.path.insert(0, str(ROOT))
        from medclipsam._utils import atomic_path
    with atomic_path(out) as tmp_out:
        nbformat.write(nb, tmp_out)
    return record


def _select(names: list[str]) -> list[Path]:
    all_ = lessons()
    if not names:
        return all_
    chosen = []
    for name in names:
        stem = Path(name).stem
        hits = [p for p in all_ if p.stem == stem or p.stem.split("_")[0] == stem.zfill(2)]
        if not hits:
            raise SystemExit(f"error: no lesson {name!r} (have {', '.join(p.stem for p in all_)})")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Execute (or with ``--check`` verify) the lessons' copies; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lessons", nargs="*", help="lesson names, stems or numbers (default: all)")
    ap.add_argument("--check", action="store_true", help="run nothing; exit 1 naming stale copies")
    ap.add_argument("--stale", action="store_true", help="run only missing or stale copies")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    ap.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    args = ap.parse_args(argv)
    chosen = _select(args.lessons)

    if args.check:
        found = [line for nb in chosen for line in problems(nb)]
        if found:
            print("executed lessons to redo:\n  " + "\n  ".join(found), file=sys.stderr)
            return 1
        print(f"{len(chosen)} executed lessons are fresh (docs/lessons/)")
        return 0

    if args.stale:
        chosen = [nb for nb in chosen if problems(nb)]
    rows = []
    for nb in chosen:
        print(f"executing {_rel(nb)} with its default parameters ...", flush=True)
        record = execute(nb, timeout=args.timeout, kernel_name=args.kernel)
        rows.append((nb.stem, record["wall_time_s"]))
        print(f"  wrote {_rel(copy_of(nb))} in {record['wall_time_s']:.0f} s", flush=True)
    if rows:
        print(f"\nwall times ({_cores()} CPU core(s)):")
        for stem, wall in rows:
            print(f"  {stem:<28} {wall:7.1f} s  ({wall / 60:.1f} min)")
    else:
        print("nothing to execute")
    return 0


if __name__ == "__main__":
    sys.exit(main())
