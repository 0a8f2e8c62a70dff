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


def _long(item) -> int:
    """0 for a notebook, 1 for another test marked ``heavy``, 2 for the rest (and for a test
    that is skipped)."""
    if "skip" in item.keywords:
        return 2
    return 0 if "notebook" in item.keywords else 1 if "heavy" in item.keywords else 2


def _queues_start_long(items: list, workers: int) -> list:
    """The order in which each of ``workers`` xdist workers starts on long tests: under
    ``--dist worksteal`` worker k first gets the k-th contiguous share of the list (shares as
    xdist cuts them), and an idle worker later takes the second half of the other's queue.
    So each share begins with every ``workers``-th long test and ends with short ones: the
    long tests start early on every worker, and what is stolen at the end is short."""
    long = [i for i in items if _long(i) < 2]
    short = [i for i in items if _long(i) == 2]
    out, left, used = [], len(items), 0
    for k in range(workers):
        share = left // (workers - k)
        mine = long[k::workers]
        take = max(share - len(mine), 0)
        out += mine + short[used : used + take]
        used += take
        left -= share
    return out + short[used:]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (the real branch of lessons 03 and 04 over random-weight
    BiomedCLIP: minutes each) run only when asked for: ``python -m pytest -m slow``. The long
    tests (notebooks, marked ``notebook``, up to a minute or two each; then the others marked
    ``heavy``) start first on every worker and the run ends on short ones (see
    :func:`_queues_start_long`), so that the workers finish together."""
    if "slow" not in (config.getoption("markexpr", "") or ""):
        skip = pytest.mark.skip(reason="slow: run with python -m pytest -m slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
    items.sort(key=_long)  # stable: the order otherwise kept
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        items[:] = _queues_start_long(items, workers)
