"""The environment report every lesson prints after its parameters: versions, world, device,
CPU threads and optional extras, light to import, and called by every lesson."""

from __future__ import annotations

import ast
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest

from medclipsam import environment as env

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks" / "src").glob("0*.py"))


def test_the_report_names_versions_world_device_threads_and_extras():
    import torch

    import medclipsam

    report = env.environment_report(world="offline", device="cpu")
    assert report["world"] == "offline"
    assert report["device"]["device"] == "cpu" and report["device"]["asked"] == "cpu"
    assert report["device"]["torch_threads"] == torch.get_num_threads()
    assert report["cores"] >= 1
    for name in (
        "medclipsam",
        "torch",
        "open_clip_torch",
        "segment-anything",
        "transformers",
        "monai",
    ):
        assert report["packages"][name], name
    assert report["packages"]["medclipsam"] == medclipsam.__version__
    assert report["packages"]["torch"] == importlib.metadata.version("torch")
    # extras: available exactly when their module imports here
    assert report["extras"]["crf"]["available"] == (
        importlib.util.find_spec("pydensecrf") is not None
    )
    assert report["extras"]["clicks"]["available"] == (
        importlib.util.find_spec("ipyevents") is not None
    )

    text = env.format_environment(report)
    for word in (
        "world",
        "offline:",
        "device",
        "cpu",
        "CPU threads",
        "torch uses",
        "open_clip_torch",
        "segment-anything",
        "transformers",
        "monai",
        "crf",
        "ipyevents",
        "dicom",
    ):
        assert word in text, word
    torch_line = next(ln for ln in text.splitlines() if ln.strip().startswith("torch "))
    assert ("CUDA" in torch_line) == (torch.version.cuda is not None)


def test_the_report_says_how_the_package_is_installed_but_not_where(tmp_path):
    """Executed lessons print the report and are committed: it names the kind of install, never
    the machine's folder (the dict keeps the folder for whoever asks)."""
    report = env.environment_report(world="offline", device="cpu")
    folder = Path(env.__file__).resolve().parent
    text = env.format_environment(report)
    assert str(folder) not in text and report["medclipsam_path"] not in text
    line = next(ln for ln in text.splitlines() if ln.startswith("  medclipsam "))
    assert env._INSTALL_WORDS[report["medclipsam_install"]] in line
    site = Path("/opt/py/lib/python3.11/site-packages/medclipsam")
    assert env._install_kind(site) == "site-packages"
    (tmp_path / "checkout" / "medclipsam").mkdir(parents=True)
    (tmp_path / "checkout" / "pyproject.toml").write_text("[project]\n")
    assert env._install_kind(tmp_path / "checkout" / "medclipsam") == "source checkout"
    (tmp_path / "vendored" / "medclipsam").mkdir(parents=True)
    assert env._install_kind(tmp_path / "vendored" / "medclipsam") == "other folder"


def test_auto_resolves_like_the_package_and_says_why():
    from medclipsam._utils import get_device

    report = env.environment_report(device="auto")
    assert report["device"]["device"] == str(get_device("auto"))
    text = env.format_environment(report)
    assert "asked for 'auto'" in text
    if report["device"]["device"] == "cpu":
        assert "no CUDA or MPS device found" in text


def test_a_missing_extra_says_what_it_is_for_and_how_to_install_it(monkeypatch):
    monkeypatch.setitem(
        env.EXTRAS,
        "crf",
        (
            ("no_such_module_xyz",),
            ("no-such-dist-xyz",),
            "the dense-CRF coarse mask",
            'pip install "medclipsam[crf]"',
        ),
    )
    report = env.environment_report(world="real", device="cpu")
    assert report["extras"]["crf"] == {
        "available": False,
        "versions": {},
        "for": "the dense-CRF coarse mask",
        "install": 'pip install "medclipsam[crf]"',
    }
    line = next(ln for ln in env.format_environment(report).splitlines() if "crf" in ln)
    assert "no:" in line and 'pip install "medclipsam[crf]"' in line


def test_show_environment_prints_and_is_exported_from_the_package(capsys):
    import medclipsam

    assert medclipsam.show_environment is env.show_environment
    assert medclipsam.show_environment(world="offline", device="cpu") is None  # nothing to display
    out = capsys.readouterr().out
    assert out.startswith("medclipsam environment") and "offline:" in out
    buf = io.StringIO()
    env.show_environment(file=buf)
    assert buf.getvalue().startswith("medclipsam environment")


def test_importing_it_is_light():
    code = (
        "import sys, medclipsam, medclipsam.environment as e; "
        "assert callable(medclipsam.show_environment); "
        "heavy = [m for m in ('torch', 'open_clip', 'matplotlib', 'transformers') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _code_cells(path: Path) -> list[tuple[list[str], str]]:
    """(tags, source) of each code cell of a percent source."""
    cells, tags, lines, code = [], [], [], False
    for line in path.read_text().splitlines() + ["# %%"]:
        if line.startswith("# %%"):
            if code:
                cells.append((tags, "\n".join(lines)))
            code = not line.startswith("# %% [markdown]")
            tags = ast.literal_eval(line.split("tags=", 1)[1]) if "tags=" in line else []
            lines = []
        else:
            lines.append(line)
    return cells


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_every_lesson_shows_its_environment_right_after_its_parameters(path):
    cells = _code_cells(path)
    i = next(i for i, (tags, _) in enumerate(cells) if "parameters" in tags)
    params = {
        t.id for n in ast.parse(cells[i][1]).body if isinstance(n, ast.Assign) for t in n.targets
    }
    source = cells[i + 1][1]
    call = next(
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "show_environment"
    )
    given = {k.arg: getattr(k.value, "id", None) for k in call.keywords}
    assert given.get("world") == "WORLD", f"{path.name}: show_environment(world=WORLD, ...)"
    if "DEVICE" in params:
        assert given.get("device") == "DEVICE", f"{path.name}: pass device=DEVICE"
