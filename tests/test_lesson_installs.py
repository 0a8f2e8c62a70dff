"""Colab and Binder install what each lesson uses.

Every lesson and exercise source is read for the optional packages it needs: those it imports
(``ipywidgets``, ``ipyevents``, ``pydensecrf``, ...) and those the package needs for what it calls
(the pipeline's default coarse mask is the dense CRF, so a lesson that builds a ``MedCLIPSAM`` or
asks for ``"crf"`` needs ``pydensecrf2``; ``medclipsam.widgets`` needs ipywidgets and ipyevents).
Its Colab cell must install them (through ``medclipsam[extras]`` or by name) and so must
``binder/environment.yml``. A lesson that imports something no dependency or extra provides fails
here too, with the name to add.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks" / "src").glob("*.py")) + sorted(
    (ROOT / "notebooks" / "exercises" / "src").glob("*.py")
)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: Top-level modules that the required dependencies provide (and the notebook kernel itself).
CORE_MODULES = {
    "numpy",
    "scipy",
    "PIL",
    "tifffile",
    "pydicom",
    "nibabel",
    "h5py",
    "skimage",
    "torch",
    "torchvision",
    "open_clip",
    "transformers",
    "segment_anything",
    "monai",
    "matplotlib",
    "tqdm",
    "medclipsam",
    "IPython",
    "google",  # google.colab: only inside the Colab cell's guard
}
#: Optional modules a lesson may import -> the distribution that provides them.
OPTIONAL_MODULES = {
    "pydensecrf": "pydensecrf2",
    "ipywidgets": "ipywidgets",
    "ipyevents": "ipyevents",
    "pytorch_grad_cam": "grad-cam",
    "papermill": "papermill",
    "nbformat": "nbformat",
    "pylibjpeg": "pylibjpeg",
    "gdcm": "python-gdcm",
}
#: Package modules that need optional distributions when a lesson imports them.
PACKAGE_MODULES = {"medclipsam.widgets": {"ipywidgets", "ipyevents"}}
#: Names whose use runs the pipeline (and so its default coarse mask).
PIPELINE_NAMES = {"MedCLIPSAM", "PromptExplorer", "reproduce", "evaluate_phantom"}
#: What a Colab runtime must not be given: its kernel and front end are Colab's own (pinned
#: ipykernel/ipython; upgrading them can crash the runtime), so no "notebooks" or "dev" extra.
NOT_ON_COLAB = {"ipykernel", "jupyterlab", "ipython"}


def _name(req: str) -> str:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)", req)
    assert m, req
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def _extra(name: str) -> set[str]:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert name in extras, f"no extra {name!r} in pyproject.toml (extras: {sorted(extras)})"
    return {_name(r) for r in extras[name]}


def _code_cells(path: Path) -> list[str]:
    """The code cells of a jupytext percent source."""
    cells, lines, code = [], [], False
    for line in path.read_text().splitlines() + ["# %%"]:
        if line.startswith("# %%"):
            if code:
                cells.append("\n".join(lines))
            code, lines = not line.startswith("# %% [markdown]"), []
        else:
            lines.append(line)
    return cells


def _crf_is_the_pipeline_default() -> bool:
    from medclipsam.config import PipelineConfig

    return PipelineConfig().postprocess == "crf"


def lesson_needs(path: Path) -> dict[str, str]:
    """The optional distributions the source at ``path`` needs -> why."""
    needs: dict[str, str] = {}
    unknown = []
    stdlib = set(sys.stdlib_module_names)
    for source in _code_cells(path):
        tree = ast.parse(source)
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for mod in modules:
                top = mod.split(".")[0]
                if mod in PACKAGE_MODULES:
                    for dist in PACKAGE_MODULES[mod]:
                        needs.setdefault(dist, f"imports {mod}")
                if top in OPTIONAL_MODULES:
                    needs.setdefault(OPTIONAL_MODULES[top], f"imports {top}")
                elif top not in CORE_MODULES and top not in stdlib:
                    unknown.append(top)
            if isinstance(node, ast.Constant) and node.value == "crf":
                needs.setdefault("pydensecrf2", 'asks for the "crf" coarse mask')
            if (
                isinstance(node, ast.Name)
                and node.id in PIPELINE_NAMES
                and _crf_is_the_pipeline_default()
            ):
                needs.setdefault(
                    "pydensecrf2",
                    f"runs the pipeline ({node.id}), whose default coarse mask is CRF",
                )
    assert not unknown, (
        f"{path.name} imports {sorted(set(unknown))}, which no dependency or known extra provides: "
        "add the package to pyproject.toml (an extra), its Colab cell and binder/environment.yml, "
        "and to OPTIONAL_MODULES in this test"
    )
    return needs


def colab_installs(path: Path) -> set[str]:
    """The distributions the Colab cell of ``path`` installs beyond the required dependencies:
    the extras of its ``medclipsam[...] @ url`` requirement, expanded, plus packages named."""
    cells = [c for c in _code_cells(path) if "google.colab" in c]
    assert len(cells) == 1, f"{path.name}: expected one Colab install cell, found {len(cells)}"
    installs: set[str] = set()
    found_package = False
    for node in ast.walk(ast.parse(cells[0])):
        if not (
            isinstance(node, ast.Call)
            and any(isinstance(a, ast.Constant) and a.value == "install" for a in ast.walk(node))
            and isinstance(node.args[0] if node.args else None, ast.List)
        ):
            continue
        for arg in node.args[0].elts:
            if isinstance(arg, ast.JoinedStr):  # f"medclipsam[crf] @ {url}"
                text = "".join(v.value for v in arg.values if isinstance(v, ast.Constant))
            elif isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                text = arg.value
            else:
                continue
            if text.startswith("-") or text in ("pip", "install"):
                continue
            if _name(text) == "medclipsam":
                found_package = True
                m = re.match(r"^\s*medclipsam\s*\[([^\]]*)\]", text)
                for extra in m.group(1).split(",") if m else []:
                    installs |= _extra(extra.strip())
            else:
                installs.add(_name(text))
    assert found_package, f"{path.name}: the Colab cell does not pip install medclipsam"
    return installs


def binder_installs() -> set[str]:
    env = yaml.safe_load((ROOT / "binder" / "environment.yml").read_text())
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    return {_name(r) for r in pip if not r.startswith("-")}


@pytest.mark.parametrize("path", SOURCES, ids=[p.stem for p in SOURCES])
def test_colab_installs_every_optional_package_the_lesson_needs(path):
    needs = lesson_needs(path)
    installs = colab_installs(path)
    missing = {d: why for d, why in needs.items() if d not in installs}
    assert not missing, (
        f"{path.name}'s Colab cell does not install "
        + "; ".join(f"{d} (the lesson {why})" for d, why in sorted(missing.items()))
        + ": add the extra to its `medclipsam[...] @ {url}` requirement"
    )
    assert not installs & NOT_ON_COLAB, (
        f"{path.name}'s Colab cell installs {sorted(installs & NOT_ON_COLAB)}; Colab brings its own "
        "kernel and front end (use the 'widgets' extra, not 'notebooks')"
    )


def test_binder_installs_every_optional_package_any_lesson_needs():
    have = binder_installs()
    missing = {}
    for path in SOURCES:
        for dist, why in lesson_needs(path).items():
            if dist not in have:
                missing.setdefault(dist, f"{path.name} {why}")
    assert not missing, f"binder/environment.yml lacks {missing}"


def test_the_detection_sees_what_the_lessons_use():
    """The rules above find the known uses (so an empty result is not a broken parser)."""
    by_name = {p.stem: lesson_needs(p) for p in SOURCES}
    assert {"ipywidgets", "ipyevents", "pydensecrf2"} <= set(by_name["06_interactive_explorer"])
    assert "pydensecrf2" in by_name["04_sam_prompting"]
    assert by_name["01_data"] == {}
    assert _extra("crf") == {"pydensecrf2"}
