"""Test-wide settings: offline hubs, a headless matplotlib, and a table of notebook run times."""

from __future__ import annotations

import os

import pytest

# Before anything imports huggingface_hub or open_clip: never touch the network in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MEDCLIPSAM_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

#: The suite runs on pytest-xdist workers (``-n 2`` in pyproject.toml's addopts; ``-n 0`` runs it in
#: one process). Each worker, and every notebook kernel and command it starts, gets one torch
#: thread: two workers on two threads each would contend for a 2-core CPU.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

NOTEBOOK_TIMES: dict[str, float] = {}


def pytest_configure(config):  # noqa: ARG001
    if XDIST_WORKER:
        import torch

        torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if not NOTEBOOK_TIMES:
        return
    terminalreporter.section("notebook execution times (papermill)")
    width = max(len(name) for name in NOTEBOOK_TIMES) + 2
    for name, seconds in sorted(NOTEBOOK_TIMES.items()):
        terminalreporter.write_line(f"{name:<{width}s} {seconds:7.1f} s")


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module (small models on a shared CPU run faster that way
    than on two contended threads); the previous count is restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def offline_pipe(one_thread):
    """The offline world's pipeline (``MedCLIPSAM.offline()``: toy CLIP + the real LiteMedSAM) for
    a test module, on one torch thread: for tests of what the method draws."""
    from medclipsam import MedCLIPSAM

    p = MedCLIPSAM.offline()
    yield p
    p.close()


@pytest.fixture(scope="module")
def standin_pipe(one_thread):
    """The offline settings with the small SAM stand-in of ``tests/toy_sam.py`` instead of
    LiteMedSAM, for a test module: for tests whose subject is not what SAM draws (folder runs,
    resume, bad input, plumbing), where LiteMedSAM's encoder would only cost time."""
    from toy_sam import standin_pipeline

    p = standin_pipeline()
    yield p
    p.close()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (the real branch of lessons 03 and 04 over random-weight
    BiomedCLIP: minutes each) run only when asked for: ``python -m pytest -m slow``. The notebooks
    (marked ``notebook``, up to a minute or two each), then the other long tests (marked
    ``heavy``) go first, so that the long tests start early and the run ends on short ones: with
    ``--dist worksteal`` (pyproject.toml's addopts) a worker that runs out of tests takes the
    second half of the other's queue, and the workers finish together."""
    # stable: the order otherwise kept
    items.sort(key=lambda item: 0 if "notebook" in item.keywords else 1 if "heavy" in item.keywords else 2)
    if "slow" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with python -m pytest -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
