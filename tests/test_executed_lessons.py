"""The executed copies of the lessons in docs/lessons/ (scripts/execute_lessons.py): one per lesson,
made from the lesson's current source (the SHA-256 recorded in the copy), without error outputs,
with the figures the lesson draws, without the absolute folders of the machine that made them, and
linked from the README. A missing or stale copy fails here with the command that remakes it;
nothing is executed to find out."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
import shutil
import tempfile
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
    assert [p.name[:2] for p in LESSONS] == ["00", "01", "02", "03", "04", "05", "06", "07"]
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


def _machine_folders() -> dict[str, str]:
    """Absolute folders of this machine that a committed copy must not show, each with what it is:
    the repository (and, in a git worktree, the main checkout), the temporary folder and the home
    folder. A lesson prints paths relative to where it runs; the environment report says how the
    package is installed, not where."""
    named = {
        "the repository": ROOT,
        "the temporary folder": Path(tempfile.gettempdir()),
        "the home folder": Path.home(),
    }
    git = ROOT / ".git"
    if git.is_file() and git.read_text().startswith("gitdir:"):  # a worktree of another checkout
        gitdir = (ROOT / git.read_text().split(":", 1)[1].strip()).resolve()
        if gitdir.parent.name == "worktrees":  # <main>/.git/worktrees/<name>
            named["the main checkout"] = gitdir.parents[2]
    found = {}
    for what, folder in named.items():
        for text in (str(folder), str(folder.resolve())):
            if len(Path(text).parts) > 1:  # never the file-system root itself
                found.setdefault(text, what)
    return found


def _output_texts(output: dict) -> list[str]:
    """The text an output shows: streams, every non-image representation, error tracebacks."""
    if output.get("output_type") == "stream":
        return [output.get("text", "")]
    if output.get("output_type") == "error":
        return [output.get("ename", ""), output.get("evalue", ""), *output.get("traceback", [])]
    return [v if isinstance(v, str) else json.dumps(v)
            for mime, v in output.get("data", {}).items() if not mime.startswith("image/")]


def machine_paths(nb: nbformat.NotebookNode, folders: dict[str, str]) -> list[str]:
    """Each output line of ``nb`` that shows one of ``folders`` (folder -> what it is), named by
    its cell: ``cell 13 (cell-13): the temporary folder /tmp in: ...``."""
    longest_first = sorted(folders, key=len, reverse=True)
    pattern = re.compile(
        r"(?<![\w.~-])(" + "|".join(map(re.escape, longest_first)) + r")(?![\w.-])"
    )
    found = []
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            for text in _output_texts(output):
                for line in text.splitlines():
                    if m := pattern.search(line):
                        shown = line[max(0, m.start() - 60) : m.end() + 100].strip()
                        found.append(f"cell {i} ({cell.get('id', '?')}): {folders[m.group(1)]} "
                                     f"{m.group(1)} in: ...{shown}...")
    return found


@pytest.mark.parametrize("notebook", LESSONS, ids=[p.stem for p in LESSONS])
def test_the_executed_copy_shows_no_folder_of_this_machine(notebook):
    out = EXE.copy_of(notebook)
    if not out.is_file():
        return  # a missing copy fails in test_the_executed_copy_is_fresh_free_of_errors...
    found = machine_paths(nbformat.read(out, as_version=4), _machine_folders())
    assert not found, (
        f"{out.relative_to(ROOT)} shows absolute folders of this machine:\n  "
        + "\n  ".join(found)
        + "\n(print paths relative to where the lesson runs; a warning shown in a notebook names "
        f"the kernel's temporary cell file, so a lesson at its defaults must raise none; then "
        f"`{EXE.COMMAND} {notebook.stem}`)"
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


def test_machine_paths_names_each_cell_that_shows_a_folder_of_this_machine():
    tmp, home = tempfile.gettempdir(), str(Path.home())
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"a lesson may mention {tmp} in its text"),
        nbformat.v4.new_code_cell("print(paths)"),
        nbformat.v4.new_code_cell("x"),
    ]
    nb.cells[1].outputs = [nbformat.v4.new_output(
        "stream", name="stdout",
        text=f"data: runs/01_data/breast, weights ~/.cache/medclipsam\nbroken: {tmp}/lesson-01/x.png\n",
    )]
    nb.cells[2].outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=f"{tmp}/ipykernel_1/2.py:3: UserWarning\n"),
        nbformat.v4.new_output("execute_result", execution_count=1,
                               data={"text/plain": f"PosixPath('{ROOT}/medclipsam')"}),
    ]
    folders = {tmp: "the temporary folder", str(ROOT): "the repository", home: "the home folder"}
    found = machine_paths(nb, folders)
    assert [f.split(" (", 1)[0] for f in found] == ["cell 1", "cell 2", "cell 2"]
    assert "the temporary folder" in found[0] and "x.png" in found[0]
    assert "the repository" in found[2]
    # a longer name that merely starts like a folder is not that folder
    nb.cells[1].outputs[0]["text"] = f"{tmp}x/file and {str(ROOT)}-other/file and ~/.cache\n"
    nb.cells[2].outputs = []
    assert machine_paths(nb, folders) == []
