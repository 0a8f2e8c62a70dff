"""The executed copies of the lessons in docs/lessons/ (scripts/execute_lessons.py): one per lesson,
made from the lesson's current source (the SHA-256 recorded in the copy), without error outputs,
with the figures the lesson draws, and linked from the README. A missing or stale copy fails here
with the command that remakes it; nothing is executed to find out."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location(
        "execute_lessons", ROOT / "scripts" / "execute_lessons.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


EXE = _load()
LESSONS = EXE.lessons()


def test_there_are_lessons_and_no_copy_without_one():
    assert [p.name[:2] for p in LESSONS] == ["00", "01", "02", "03", "04", "05", "06"]
    copies = {p.name for p in (ROOT / "docs" / "lessons").glob("*.ipynb")}
    assert copies <= {p.name for p in LESSONS}, "docs/lessons/ holds a copy of no lesson"


@pytest.mark.parametrize("notebook", LESSONS, ids=[p.stem for p in LESSONS])
def test_the_executed_copy_is_fresh_free_of_errors_and_shows_its_figures(notebook):
    found = EXE.problems(notebook)
    assert not found, (
        "\n".join(found)
        + f"\n(`{EXE.COMMAND}` executes every lesson with its defaults, `{EXE.COMMAND} --stale` "
        "only the missing or stale ones; commit docs/lessons/ afterwards)"
    )


def test_the_readme_links_every_executed_copy():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The notebooks", 1)[1].split("\n\n", 2)[1]
    for nb in LESSONS:
        row = next((ln for ln in table.splitlines() if f"notebooks/{nb.name}" in ln), None)
        assert row is not None, f"the README's lesson table has no row for {nb.name}"
        assert f"(docs/lessons/{nb.name})" in row, f"{nb.name}'s row does not link its copy"


# -- the checks themselves, on a copy of a copy -------------------------------------------------


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The script pointed at a one-lesson tree in tmp_path, with a fresh executed copy."""
    nbs, src, out = tmp_path / "notebooks", tmp_path / "notebooks" / "src", tmp_path / "docs"
    src.mkdir(parents=True)
    out.mkdir()
    (src / "01_x.py").write_text(
        "# %%\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\n"
    )
    lesson = nbformat.v4.new_notebook()
    lesson.cells = [
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    ]
    nbformat.write(lesson, nbs / "01_x.ipynb")
    executed = copy.deepcopy(lesson)
    executed.cells[0].execution_count = 1
    executed.cells[0].outputs = [
        nbformat.v4.new_output(
            "display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}
        )
    ]
    executed.metadata["medclipsam"] = {
        "source_sha256": hashlib.sha256((src / "01_x.py").read_bytes()).hexdigest()
    }
    nbformat.write(executed, out / "01_x.ipynb")
    for name, value in (
        ("ROOT", tmp_path),
        ("NOTEBOOKS", nbs),
        ("LESSON_SOURCES", src),
        ("OUT", out),
    ):
        monkeypatch.setattr(EXE, name, value)
    return nbs / "01_x.ipynb", out / "01_x.ipynb", src / "01_x.py"


def test_problems_names_missing_stale_failed_and_figureless_copies(fake):
    lesson, out, src = fake
    assert EXE.problems(lesson) == []
    assert EXE.main(["--check"]) == 0

    src.write_text(src.read_text() + "# an edit\n")
    (msg,) = EXE.problems(lesson)
    assert "is stale" in msg and "python scripts/execute_lessons.py 01_x" in msg
    assert EXE.main(["--check"]) == 1

    nb = nbformat.read(out, as_version=4)
    nb.metadata["medclipsam"]["source_sha256"] = EXE.sha256(src)
    nb.cells[0].outputs = [
        nbformat.v4.new_output("error", ename="ValueError", evalue="boom", traceback=[])
    ]
    nbformat.write(nb, out)
    found = " ".join(EXE.problems(lesson))
    assert "error outputs" in found and "ValueError: boom" in found
    assert "shows no figure" in found

    out.unlink()
    (msg,) = EXE.problems(lesson)
    assert "is missing" in msg


@pytest.mark.notebook
def test_execute_records_the_source_hash_and_wall_time_and_draws_inline(fake, monkeypatch):
    lesson, out, src = fake
    out.unlink()
    monkeypatch.setenv("MPLBACKEND", "Agg")  # what CI exports: the kernel must not inherit it
    record = EXE.execute(lesson, timeout=120)
    assert record["source_sha256"] == EXE.sha256(src) and record["wall_time_s"] > 0
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata["medclipsam"] == record
    assert EXE.image_outputs(nb) == 1 and EXE.error_outputs(nb) == []
    assert EXE.problems(lesson) == []
    assert nb.metadata["papermill"]["input_path"] == "notebooks/01_x.ipynb"
    shutil.rmtree(out.parent)
