"""The bad-input corpus through the library and the command line (issue 26).

Writes the corpus (``tests/bad_inputs.py``: about 110 written cases plus the DICOM and NIfTI test
files pydicom and nibabel ship), reads every case with the library's readers, and runs it through
every command that takes such input: ``segment`` and ``pseudo-label`` once per folder of cases,
``evaluate`` per mask and data-set case, ``train-weak`` per data-set case, ``finetune --captions``
per caption CSV, ``segment`` with each weight file (``--sam PATH``, ``--sam litemedsam
--sam-checkpoint PATH``, ``--clip PATH``, ``--clip local-dir:DIR``), ``prepare busi`` per archive and
``compare`` for a few. Each outcome is classified (ok, clear error, flagged, unclear, silent skip,
wrong, hang; see ``tests/bad_inputs.py``); a table per case and the counts are printed, and the
exit code is 1 if any case is unclear, silently skipped, wrong or hung.

Commands run in worker processes that call ``medclipsam.cli.main`` once per command line (the
same code as the ``medclipsam`` executable, without starting Python and torch for each); an
exception escaping ``main`` is what a user would see as a traceback. Folder runs use the test
stand-in SAM (``tests/data/toy_sam.pt``) and 8 gScoreCAM channels: the cases are about errors,
not masks. Run::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bad_input_corpus.py --out /tmp/corpus [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import bad_inputs as corpus  # noqa: E402
from bad_inputs import FAILING, OUTCOMES, RAW_MARKERS, Case, Outcome  # noqa: E402

PROMPT = "breast tumor"
FAST = ["--k", "8", "--quiet", "--device", "cpu"]
QUICK_CASES = {"captions/latin1.csv", "captions/ok.csv", "sam/pickled.pth", "litemedsam/random.pth",
               "clip/lfs.pt", "clip_dir/pickled_bin", "archives/zip_slip.zip", "masks/smaller.png",
               "pairs/size_mismatch"}


# --------------------------------------------------------------------------------------------
# the worker: many command lines in one process


def run_worker(jobs_file: Path, results_file: Path, timeout: int) -> None:
    """Run each job's argv through ``medclipsam.cli.main``; write rc, stdout, stderr, traceback."""
    from medclipsam.cli import main

    jobs = json.loads(jobs_file.read_text())
    results = []
    for job in jobs:
        out, err = io.StringIO(), io.StringIO()
        rc: Any = None
        tb = ""
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                with corpus.time_limit(timeout):
                    rc = main(job["argv"])
            except SystemExit as e:
                rc = e.code
            except corpus._Timeout:
                rc = "hang"
            except BaseException:  # noqa: BLE001 - what a user would see as a traceback
                rc = "traceback"
                tb = traceback.format_exc()
        results.append({**job, "rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(),
                        "traceback": tb, "seconds": round(time.perf_counter() - t0, 1)})
        results_file.write_text(json.dumps(results))  # after each job: a killed worker keeps them


def run_jobs(jobs: list[dict], work: Path, label: str, timeout: int) -> list[dict]:
    """Run ``jobs`` in one worker process; a job the worker never finished comes back as a hang."""
    work.mkdir(parents=True, exist_ok=True)
    jobs_file, results_file = work / f"{label}_jobs.json", work / f"{label}_results.json"
    jobs_file.write_text(json.dumps(jobs))
    results_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        subprocess.run([sys.executable, __file__, "--worker", str(jobs_file), str(results_file),
                        "--timeout", str(timeout)], timeout=timeout * len(jobs) + 300, check=False)
    except subprocess.TimeoutExpired:
        pass
    done = json.loads(results_file.read_text()) if results_file.is_file() else []
    for job in jobs[len(done):]:
        done.append({**job, "rc": "hang", "stdout": "", "stderr": "", "traceback": "", "seconds": 0})
    print(f"  {label}: {len(jobs)} command(s) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return done


# --------------------------------------------------------------------------------------------
# classification


def _raw(text: str) -> list[str]:
    return [m for m in RAW_MARKERS if m in text]


def judge_command(case: Case, res: dict) -> tuple[str, str]:
    """Outcome of one command line run for one case."""
    rc, err = res["rc"], res["stderr"]
    if rc == "hang":
        return "hang", "no answer in time"
    if rc == "traceback":
        return "unclear", "traceback: " + res["traceback"].strip().splitlines()[-1][:250]
    # "error: ..." (medclipsam) or "prepare_busi: error: ..." (a converter's own parser)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:") or ": error: " in ln[:40]]
    if rc == 2:
        if len(errors) != 1:
            return "unclear", f"exit 2 with {len(errors)} error lines: {err.strip()[:250]}"
        if not case.mentioned_in(errors[0]):
            return "unclear", f"does not name the file: {errors[0][:250]}"
        if _raw(errors[0]):
            return "unclear", f"library wording {_raw(errors[0])}: {errors[0][:250]}"
        return "clear error", errors[0]
    if "Traceback" in err:
        return "unclear", "traceback in stderr"
    if rc == 0:
        said = [ln for ln in err.splitlines() if ln.strip() and case.mentioned_in(ln)]
        return ("flagged", said[0][:250]) if said else ("ok", "")
    said = [ln for ln in err.splitlines() if case.mentioned_in(ln)]
    if said and not _raw(said[0]):
        return "clear error", f"exit {rc}: {said[0][:250]}"
    return "unclear", f"exit {rc}: {err.strip()[:250]}"


def judge_folder_run(cases: list[Case], res: dict) -> list[tuple[str, str]]:
    """Outcome of a folder run (``segment``/``pseudo-label``) for each file of the folder: its row
    in results.csv, or a message naming it; a file with neither was skipped in silence."""
    from medclipsam.data.datasets import nfc
    from medclipsam.data.io import file_stem

    rc, err = res["rc"], res["stderr"]
    if rc in ("hang", "traceback") or rc == 2:
        o, d = judge_command(Case("folder", "", Path("/"), ""), res)
        return [("hang" if rc == "hang" else "unclear", f"the whole run: {d}")] * len(cases)
    table = Path(res["out"]) / "results.csv"
    rows = {}
    if table.is_file():
        with open(table, newline="", encoding="utf-8") as fh:
            rows = {nfc(r["id"]): r for r in csv.DictReader(fh)}
    out = []
    for case in cases:
        row = rows.get(nfc(case.path.name)) or rows.get(nfc(file_stem(case.path)))
        if row is None:
            said = [ln for ln in err.splitlines() if case.mentioned_in(ln)]
            out.append(("clear error", said[0][:250]) if said else ("silent skip", "no row, no message"))
        elif row["status"] in ("ok", ""):
            out.append(("flagged", f"flags: {row['flags']}") if row.get("flags") else ("ok", ""))
        elif not row.get("error"):
            out.append(("unclear", f"status {row['status']} without a reason"))
        elif _raw(row["error"]) or " ".join(row["error"].split(": ")[1:2]).endswith("Error"):
            out.append(("unclear", f"row error: {row['error'][:250]}"))
        else:
            out.append(("clear error", f"{row['status']}: {row['error'][:200]}"))
    return out


# --------------------------------------------------------------------------------------------
# the command lines


def cli_outcomes(cases: list[Case], out: Path, quick: bool, timeout: int) -> list[Outcome]:
    """Every case through the commands that take it; one Outcome per case and command."""
    work = out.parent / (out.name + "_runs")
    shutil.rmtree(work, ignore_errors=True)  # no resume of an earlier run's outputs
    toy_sam = str(out / "checkpoints" / "sam" / "toy_sam.pt")
    by_group: dict[str, list[Case]] = {}
    for c in cases:
        by_group.setdefault(c.group, []).append(c)
    one = out / "one_image"
    one.mkdir(exist_ok=True)
    corpus._save(one / "a.png", corpus.phantom_image())
    results: list[Outcome] = []

    # folder runs: every file of the folder gets a row or a message
    folder_jobs = []
    for group in ("images", "dicom", "nifti"):
        for command in (["segment"] if quick or group != "images" else ["segment", "pseudo-label"]):
            dest = work / f"{command}_{group}"
            folder_jobs.append({"group": group, "command": command, "out": str(dest), "argv": [
                command, "--images", str(out / group), "--prompt", PROMPT, "--out", str(dest),
                "--sam", toy_sam, *FAST]})
    for res in run_jobs(folder_jobs, work, "folders", timeout * 10):
        for case, (o, d) in zip(by_group[res["group"]], judge_folder_run(by_group[res["group"]], res)):
            results.append(Outcome(case.name, res["command"], o, d))

    # one command line per case
    jobs: list[dict] = []

    def add(case: Case, command: str, argv: list[str]) -> None:
        if not quick or case.name in QUICK_CASES:
            jobs.append({"case": case.name, "command": command, "argv": argv})

    for c in by_group["masks"]:
        add(c, "evaluate", ["evaluate", "--pred", str(c.path.parent), "--gt",
                            str(c.path.parent.parent / "gt"), "--n-boot", "10"])
    for c in by_group["pairs"]:
        add(c, "evaluate", ["evaluate", "--pred", str(c.path / "masks"), "--gt", str(c.path / "gt"),
                            "--n-boot", "10"])
        add(c, "train-weak", ["train-weak", "--images", str(c.path / "images"), "--masks",
                              str(c.path / "masks"), "--val-images", str(c.path / "images"),
                              "--val-masks", str(c.path / "masks"), "--out", str(work / "tw" / c.path.name),
                              "--epochs", "1", "--min-epochs", "1", "--size", "32", "--batch-size", "2",
                              "--device", "cpu", "--quiet"])
    for c in by_group["captions"]:
        add(c, "finetune", ["finetune", "--captions", str(c.path), "--clip", "toy", "--out",
                            str(work / "ft" / c.path.stem), "--epochs", "1", "--batch-size", "2",
                            "--num-workers", "0", "--device", "cpu", "--no-eval-before",
                            "--eval-every", "0", "--warmup-steps", "0", "--no-progress"])
    seg = ["segment", "--images", str(one), "--prompt", PROMPT, *FAST]
    for c in by_group["sam"]:
        add(c, "segment --sam", [*seg, "--out", str(work / "sam" / c.path.name), "--sam", str(c.path)])
    for c in by_group["litemedsam"]:
        add(c, "segment --sam-checkpoint", [*seg, "--out", str(work / "lm" / c.path.name), "--sam",
                                            "litemedsam", "--sam-checkpoint", str(c.path)])
    for c in by_group["clip"]:
        add(c, "segment --clip", [*seg, "--out", str(work / "clip" / c.path.name), "--sam", toy_sam,
                                  "--clip", str(c.path)])
    for c in by_group["clip_dir"]:
        add(c, "segment --clip local-dir:", [*seg, "--out", str(work / "cd" / c.path.name), "--sam",
                                             toy_sam, "--clip", f"local-dir:{c.path}"])
    for c in by_group["archives"]:
        add(c, "prepare busi", ["prepare", "busi", str(c.path), str(work / "prep" / c.path.stem),
                                "--quiet"])
    compare = ["compare", "--prompt", PROMPT, "--clip", "toy", "--n-boot", "10", "--quiet",
               "--device", "cpu"]
    named = {c.name: c for c in cases}
    for name in ("sam/pickled.pth", "sam/truncated.pth", "sam/html.pth"):
        add(named[name], "compare --backends", [*compare, "--data", str(out / "pairs" / "ok"),
                                                "--backends", str(named[name].path),
                                                "--out", str(work / "cmp" / Path(name).stem)])
    for name in ("pairs/size_mismatch", "pairs/mask_is_html"):
        add(named[name], "compare --data", [*compare, "--data", str(named[name].path), "--backends",
                                            toy_sam, "--out", str(work / "cmp" / Path(name).name)])
    for res in run_jobs(jobs, work, "commands", timeout):
        o, d = judge_command(named[res["case"]], res)
        results.append(Outcome(res["case"], res["command"], o, " ".join(d.split())))
    return results


# --------------------------------------------------------------------------------------------
# report


def report(cases: list[Case], outcomes: list[Outcome], verbose: bool) -> dict[str, Counter]:
    """Print a table per case and the counts per channel; return the counts."""
    by_case: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_case.setdefault(o.case, []).append(o)
    width = max(len(c.name) for c in cases)
    print(f"{'case':<{width}}  {'channel':<26} {'outcome':<12} detail")
    for c in cases:
        for o in by_case.get(c.name, []):
            if verbose or o.outcome not in ("ok",):
                print(f"{c.name:<{width}}  {o.channel:<26} {o.outcome:<12} {o.detail[:160]}")
    counts: dict[str, Counter] = {}
    for o in outcomes:
        key = "library" if o.channel == "library" else "cli"
        counts.setdefault(key, Counter())[o.outcome] += 1
        counts.setdefault(f"  {o.channel}", Counter())[o.outcome] += 1
    print()
    print(f"{'channel':<28}" + "".join(f"{k:>13}" for k in OUTCOMES) + f"{'total':>8}")
    for key in ["library", "cli", *sorted(k for k in counts if k.startswith("  ") and k != "  library")]:
        row = counts.get(key, Counter())
        print(f"{key:<28}" + "".join(f"{row[k]:>13}" for k in OUTCOMES) + f"{sum(row.values()):>8}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bad_input_corpus"),
                   help="folder for the corpus (emptied first); runs go to OUT_runs")
    p.add_argument("--quick", action="store_true", help="a subset, for a fast check")
    p.add_argument("--library-only", action="store_true", help="skip the command lines")
    p.add_argument("--timeout", type=int, default=300, help="seconds per read or command line")
    p.add_argument("--verbose", action="store_true", help="list ok outcomes too")
    p.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        run_worker(*args.worker, args.timeout)
        return 0
    t0 = time.perf_counter()
    cases = corpus.write_corpus(args.out, quick=args.quick)
    print(f"{len(cases)} cases written to {args.out}", file=sys.stderr)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcomes = [corpus.classify_library(c, args.timeout) for c in cases]
    print(f"  library: {len(cases)} cases in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if not args.library_only:
        outcomes += cli_outcomes(cases, args.out, args.quick, args.timeout)
    counts = report(cases, outcomes, args.verbose)
    bad = sum(counts.get(k, Counter())[o] for k in ("library", "cli") for o in FAILING)
    print(f"\n{len(cases)} cases, {len(outcomes)} outcomes, {bad} unclear/silent/wrong/hang, "
          f"{time.perf_counter() - t0:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
