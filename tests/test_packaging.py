"""The three places that list dependencies agree, and the repository's promises hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> tuple[str, str]:
    """('open-clip-torch', '>=2.23') from 'open_clip_torch>=2.23' (PEP 503 names, no spaces)."""
    req = req.replace(" ", "")
    m = re.match(r"^([A-Za-z0-9_.\-]+)(.*)$", req)
    assert m, req
    name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
    spec = ",".join(sorted(m.group(2).split(","))) if m.group(2) else ""
    return name, spec


#: The extras the conda files install besides the dependencies: what the lessons use (their
#: notebook tools, the explorer's widgets, the dense CRF of lessons 00 and 04-06), and the DICOM
#: decoders that a compressed DICOM file needs.
CONDA_EXTRAS = ("notebooks", "crf", "dicom")


def _pyproject_reqs(extras: tuple[str, ...] = ("notebooks",)) -> set[tuple[str, str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = list(data["project"]["dependencies"])
    for extra in extras:
        reqs += data["project"]["optional-dependencies"][extra]
    return {_norm(r) for r in reqs}


def _conda_pip_reqs(path: Path) -> set[tuple[str, str]]:
    env = yaml.safe_load(path.read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, f"{path}: expected one pip section"
    return {_norm(r) for r in pip_lists[0] if not r.startswith(("-", "--"))}


@pytest.mark.parametrize("path", ["environment.yml", "binder/environment.yml"])
def test_conda_files_list_the_same_dependencies_as_pyproject(path):
    py = _pyproject_reqs(CONDA_EXTRAS)
    conda = _conda_pip_reqs(ROOT / path)
    assert conda == py, (
        f"{path} and pyproject.toml disagree: only in {path}: {sorted(conda - py)}; "
        f"only in pyproject: {sorted(py - conda)}"
    )


def test_binder_installs_the_package_itself():
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install" in post and "-e ." in post


def test_the_widgets_extra_is_the_notebooks_extras_widgets():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = data["project"]["optional-dependencies"]
    widgets = {_norm(r) for r in extras["widgets"]}
    assert {n for n, _ in widgets} == {"ipywidgets", "ipyevents"}
    assert widgets <= {_norm(r) for r in extras["notebooks"]}


def test_jupyterlab_and_ipywidgets_are_pinned_together():
    reqs = dict(_pyproject_reqs())
    # Lab 4 renders ipywidgets 8 only: both bounded on the same major versions.
    assert reqs["jupyterlab"] == "<5,>=4.0" and reqs["ipywidgets"] == "<9,>=8.1"


def test_ci_constraints_pin_every_direct_dependency_exactly():
    pins = {}
    for line in (ROOT / "constraints" / "ci.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, spec = line.split("==")
            pins[_norm(name)[0]] = spec
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    direct = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["dev"]
    missing = sorted({_norm(r)[0] for r in direct} - set(pins))
    assert not missing, f"constraints/ci.txt lacks exact pins for {missing}"


def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1].strip() in ci.splitlines(), "CI must call the README's test command"


def test_readme_says_how_to_get_cpu_only_torch_before_the_quick_start_commands():
    quick = (ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    before_commands = quick.split("```bash", 1)[0]
    assert (
        "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"
        in before_commands
    )


def test_package_source_is_ruff_clean():
    # notebooks/: the lesson and exercise sources (the .ipynb are excluded in pyproject.toml)
    folders = [
        d for d in ("medclipsam", "tests", "data_scripts", "benchmarks", "scripts", "notebooks")
        if (ROOT / d).is_dir()
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *folders],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
