"""Every committed notebook (lesson, exercise solution, student exercise) is exactly what its
jupytext percent source builds (scripts/build_notebooks.py), so an edit made on one side only,
in Jupyter or in the source, fails here with the file named and the command that fixes it."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_build():
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", ROOT / "scripts" / "build_notebooks.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def build():
    return _load_build()


def test_every_committed_notebook_is_built_from_its_source(build):
    stale = build.stale()
    assert not stale, "stale notebooks:\n  " + "\n  ".join(stale) + "\n" + build.fix_hint()


def test_every_lesson_and_exercise_has_a_source(build):
    built = {p.relative_to(ROOT).as_posix() for p in build.expected()}
    lessons = {p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert lessons and lessons <= built
    for name in ("ex01_dhn_nce", "ex02_gscorecam", "ex03_boxes", "ex04_weak"):
        assert f"notebooks/exercises/{name}.ipynb" in built
        assert f"notebooks/exercises/solutions/{name}.ipynb" in built


@pytest.fixture
def copy(tmp_path):
    """The build module pointed at a copy of notebooks/ (to make it stale on purpose)."""
    mod = _load_build()
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    mod.ROOT = tmp_path
    mod.NOTEBOOKS = tmp_path / "notebooks"
    mod.LESSON_SOURCES = mod.NOTEBOOKS / "src"
    mod.EXERCISE_SOURCES = mod.NOTEBOOKS / "exercises" / "src"
    mod.STUDENTS = mod.NOTEBOOKS / "exercises"
    mod.SOLUTIONS = mod.STUDENTS / "solutions"
    assert mod.stale() == []
    return mod


def _edit_notebook(path: Path, index: int, new_source: str) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.cells[index].source = new_source
    nbformat.write(nb, path)


def test_an_edit_on_either_side_alone_is_named(copy):
    nb = copy.NOTEBOOKS / "01_data.ipynb"
    src = copy.LESSON_SOURCES / "01_data.py"
    original = nb.read_text()
    _edit_notebook(nb, 0, "# edited in Jupyter")
    assert copy.stale() == ["notebooks/01_data.ipynb differs from its source notebooks/src/01_data.py"]
    assert "--from-notebook" in copy.fix_hint()

    nb.write_text(original)
    src.write_text(src.read_text().replace("# %% [markdown]\n", "# %% [markdown]\n# edited\n", 1))
    assert copy.stale() == ["notebooks/01_data.ipynb differs from its source notebooks/src/01_data.py"]


def test_a_student_notebook_and_a_notebook_without_source_are_named(copy):
    _edit_notebook(copy.STUDENTS / "ex03_boxes.ipynb", 0, "# solved by hand")
    shutil.copy(copy.NOTEBOOKS / "00_quickstart.ipynb", copy.NOTEBOOKS / "07_new.ipynb")
    (copy.SOLUTIONS / "ex02_gscorecam.ipynb").unlink()
    assert copy.stale() == [
        "notebooks/exercises/solutions/ex02_gscorecam.ipynb is missing "
        "(built from notebooks/exercises/src/ex02_gscorecam.py)",
        "notebooks/exercises/ex03_boxes.ipynb differs from its source "
        "notebooks/exercises/src/ex03_boxes.py",
        "notebooks/07_new.ipynb has no source (expected one in notebooks/src/)",
    ]


def test_build_and_from_notebook_round_trip(copy):
    nb = copy.NOTEBOOKS / "02_dhn_nce.ipynb"
    _edit_notebook(nb, 0, "# 02 · edited in Jupyter\n\nwith $\\tau$")
    assert copy.main(["--from-notebook", str(nb)]) == 0
    src = (copy.LESSON_SOURCES / "02_dhn_nce.py").read_text()
    assert src.startswith("# %% [markdown]\n# # 02 · edited in Jupyter\n#\n# with $\\tau$\n")
    assert copy.stale() == []
    # a student notebook is never a source
    assert copy.main(["--from-notebook", str(copy.STUDENTS / "ex01_dhn_nce.ipynb")]) == 1


def test_cell_metadata_other_than_tags_is_refused(copy):
    src = copy.LESSON_SOURCES / "00_quickstart.py"
    src.write_text(src.read_text().replace("# %% [markdown]", '# %% [markdown] slideshow="x"', 1))
    with pytest.raises(copy.SourceError, match=r"00_quickstart.py, cell 0: metadata \['slideshow'\]"):
        copy.stale()
    assert copy.main(["--check"]) == 1
