"""Every notebook under notebooks/ is clean in git and runs top to bottom under papermill.

New notebooks are picked up automatically. In CI each runs in the offline world with its smallest
settings (the CI parameters below, applied to the names its ``parameters`` cell defines); the run
time of each is printed at the end of the pytest run (see conftest.py). Each lesson's computed
take-aways (medclipsam.teaching) are checked against its outputs (tests/lesson_claims.py). The kernels draw with
matplotlib's inline backend (not the ``Agg`` that .ci/run and conftest.py export for this process),
so a notebook that draws must show at least one image: a figure that breaks is caught here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import NOTEBOOK_TIMES
from lesson_claims import claims_problems

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
)
# Student exercise notebooks raise NotImplementedError by design, and their solutions
# (notebooks/exercises/solutions/) are executed once, by the grader, in
# tests/test_exercises.py::test_the_solutions_score_full_marks (parameters injected as papermill
# does; the same error and figure checks as here): every other notebook runs here.
RUNNABLE = [p for p in NOTEBOOKS if ROOT / "notebooks" / "exercises" not in p.parents]
# What CI overrides, where the notebook's parameters cell defines the name.
CI_PARAMETERS = {"WORLD": "offline", "SMOKE": True, "DEVICE": "cpu"}
# nbval re-executes a notebook with its own defaults: only the quick ones go through it too.
NBVAL_LAX = ["notebooks/01_data.ipynb"]


def _load_execute_lessons():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "execute_lessons", ROOT / "scripts" / "execute_lessons.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


EXE = _load_execute_lessons()


def _ids(paths):
    return [str(p.relative_to(ROOT / "notebooks")) for p in paths]


def _parameters_cells(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_there_are_notebooks():
    assert any(p.name == "01_data.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs_and_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"
    params = _parameters_cells(nb)
    assert len(params) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(params)}"
    names = {t.id for n in ast.parse(params[0].source).body if isinstance(n, ast.Assign) for t in n.targets}
    assert {"WORLD", "SMOKE"} <= names, f"{path.name}: the parameters cell must define WORLD and SMOKE"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("#"), (
        f"{path.name}: a lesson starts with a markdown title"
    )


@pytest.mark.notebook
@pytest.mark.parametrize("path", RUNNABLE, ids=_ids(RUNNABLE))
def test_notebook_runs_under_papermill(path, tmp_path, monkeypatch):
    import papermill

    nb = nbformat.read(path, as_version=4)
    source = _parameters_cells(nb)[0].source
    names = {t.id for n in ast.parse(source).body if isinstance(n, ast.Assign) for t in n.targets}
    params = {k: v for k, v in CI_PARAMETERS.items() if k in names}
    # The kernel inherits the environment: inline figures (image outputs), whatever CI exports.
    monkeypatch.setenv("MPLBACKEND", EXE.INLINE_BACKEND)
    t0 = time.perf_counter()
    papermill.execute_notebook(
        str(path),
        str(tmp_path / path.name),
        parameters=params,
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )
    NOTEBOOK_TIMES[str(path.relative_to(ROOT))] = time.perf_counter() - t0
    out = nbformat.read(tmp_path / path.name, as_version=4)
    assert EXE.error_outputs(out) == []
    if path.parent == ROOT / "notebooks":  # a lesson: its stated take-aways match its outputs
        assert claims_problems(out, path.stem) == []
    if EXE.makes_figures(nb):
        assert EXE.image_outputs(out) > 0, (
            f"{path.name} draws figures but showed none (a figure cell that failed silently, "
            "or a non-inline matplotlib backend in the kernel)"
        )


@pytest.mark.notebook
@pytest.mark.parametrize("rel", NBVAL_LAX)
def test_nbval_lax(rel, tmp_path):
    proc = subprocess.run(
        # -n 0: the repository's addopts distribute tests over xdist workers, and nbval's cells
        # must run in order in one kernel
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "--nbval-lax",
         "--rootdir", str(tmp_path), str(ROOT / rel)],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800,  # only catches a hang
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
