"""The lessons' real branch (``WORLD = "real"``) over stand-ins that load offline, so it cannot
rot unseen: BiomedCLIP's real architecture from a Hugging Face cache written here (random weights)
and LiteMedSAM from a copy of its checkpoint file given as ``SAM_CHECKPOINT`` (the path a user's
own SAM weights take; SAM ViT-B from a checkpoint is tests/test_models_real.py's subject), at a
small k, under papermill.

Lessons 00 and 06 run with the rest of the notebooks; 03 and 04 are marked ``slow`` (several
minutes each on a 2-core CPU) and run with ``python -m pytest -m slow tests/test_real_lessons.py``.
A lesson whose parameters cell does not yet define what its real branch needs (``WORLD``,
``SMOKE``, ``CLIP``, ``K``, and for lessons with SAM ``SAM`` and ``SAM_CHECKPOINT``) is skipped
with the names it lacks. Each run must say ``real world:`` (what
:mod:`medclipsam.worlds` prints when the real models loaded) and must not have fallen back to the
toy world.

``MEDCLIPSAM_LESSONS_DIR`` points the test at another folder of built lessons (to try edited
lessons before they are committed).
"""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import nbformat
import pytest
from conftest import NOTEBOOK_TIMES

ROOT = Path(__file__).resolve().parents[1]
LESSONS_DIR = Path(os.environ.get("MEDCLIPSAM_LESSONS_DIR") or ROOT / "notebooks")
WITH_SAM = {"WORLD", "SMOKE", "CLIP", "SAM", "SAM_CHECKPOINT", "K"}
#: lesson file -> (the parameters its real branch needs, slow)
REAL_LESSONS = {
    "00_quickstart.ipynb": (WITH_SAM, False),
    "06_interactive_explorer.ipynb": (WITH_SAM, False),
    "03_gscorecam.ipynb": ({"WORLD", "SMOKE", "CLIP", "K"}, True),
    "04_sam_prompting.ipynb": (WITH_SAM, True),
}
K_SMALL = 4  # gScoreCAM channels: the real branch's code, not the maps, is under test
#: further parameters per lesson: 00 segments one phantom image (SEED) instead of searching three
#: (the search and the failure analysis are model-independent code the offline run covers)
EXTRA = {"00_quickstart.ipynb": {"SEED": 0}}


def _cases():
    for name, (needed, slow) in REAL_LESSONS.items():
        marks = [pytest.mark.notebook] + ([pytest.mark.slow] if slow else [])
        yield pytest.param(name, needed, id=name.removesuffix(".ipynb"), marks=marks)


def _parameter_names(nb) -> set[str]:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        return set()
    tree = ast.parse(cells[0].source)
    return {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
            if isinstance(t, ast.Name)}


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """A BiomedCLIP hub cache, a copy of LiteMedSAM's checkpoint, and the environment the notebook
    kernels inherit (offline, that hub cache)."""
    import shutil

    from hf_cache import write_biomedclip_cache

    from medclipsam.models.litemedsam import litemedsam_checkpoint

    root = tmp_path_factory.mktemp("real_world")
    hub = write_biomedclip_cache(root / "hf")
    sam_file = root / "my_lite_medsam.pth"
    shutil.copyfile(litemedsam_checkpoint(), sam_file)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(hub))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("MEDCLIPSAM_OFFLINE", "1")
        mp.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
        yield {"CLIP": "biomedclip", "SAM": "litemedsam", "SAM_CHECKPOINT": str(sam_file)}


@pytest.mark.parametrize("name, needed", _cases())
def test_real_branch_runs_over_random_weight_stand_ins(name, needed, request, tmp_path):
    import papermill

    path = LESSONS_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    nb = nbformat.read(path, as_version=4)
    names = _parameter_names(nb)
    missing = sorted(needed - names)
    if missing:
        pytest.skip(f"{name}: its parameters cell lacks {', '.join(missing)} (the real branch "
                    "takes CLIP, SAM, SAM_CHECKPOINT and K from it: see medclipsam.worlds)")
    stand_ins = request.getfixturevalue("stand_ins")  # only once a lesson can use them
    params = {"WORLD": "real", "SMOKE": True, "K": K_SMALL, **stand_ins, **EXTRA.get(name, {})}
    if "DEVICE" in names:
        params["DEVICE"] = "cpu"
    params = {k: v for k, v in params.items() if k in names}
    out = tmp_path / name
    t0 = time.perf_counter()
    papermill.execute_notebook(str(path), str(out), parameters=params, cwd=str(tmp_path),
                               kernel_name="python3", progress_bar=False)
    NOTEBOOK_TIMES[f"{name} (real world, random weights, k={K_SMALL})"] = time.perf_counter() - t0
    done = nbformat.read(out, as_version=4)
    text = "\n".join(
        o.get("text", "") for c in done.cells if c.cell_type == "code" for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    assert "real world:" in text, f"{name} did not report the real world:\n{text[-3000:]}"
    assert "-> using the offline" not in text, f"{name} fell back to the offline world:\n{text[-3000:]}"
