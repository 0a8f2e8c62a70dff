"""Soak test: does memory stay flat over a long folder run and a long explorer session? (offline world: toy CLIP + LiteMedSAM)

    python benchmarks/soak.py [--n 500] [--clicks 300] [--size 128] [--threads 1] [--out DIR]

Part 1 writes ``--n`` breast phantom images and segments them with ``MedCLIPSAM.offline().run_folder``
while a thread samples the process's resident memory (VmRSS, every 0.1 s) and how many rows
results.csv holds, so each sample belongs to the image being processed. The peak RSS of the last
100 images must be within 5 % of the peak of the 100 before them.

Part 2 builds ``PromptExplorer.offline()`` and makes ``--clicks`` scripted interactions, cycling through
what a user does (a point, a negative point, a box, clear, a new prompt, another image), sampling
RSS after each. After a warm-up of the first third, the last 100 interactions' peak must be within
5 % of the 100 before them, and the fitted growth per interaction is printed.

Prints one JSON object with the figures (and writes it to ``--out``/soak.json); exit code 1 when
memory is not flat. Small runs (``--n 40 --clicks 60``) check that the script works; the 5 %
verdict needs the full size (windows of 100).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

WINDOW = 100
TOLERANCE = 0.05


def rss_mib() -> float:
    """The resident memory of this process now (VmRSS), in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def _windows(values: list[float], window: int) -> tuple[float, float] | None:
    """Peaks of the last ``window`` values and of the ``window`` before them (None if too few)."""
    if len(values) < 2 * window:
        return None
    return max(values[-2 * window:-window]), max(values[-window:])


def _verdict(values: list[float], window: int) -> dict:
    pair = _windows(values, window)
    if pair is None:
        w = max(1, len(values) // 2)
        before, last = max(values[:w]), max(values[w:]) if values[w:] else max(values)
        return {"window": w, "peak_before_mib": round(before, 1), "peak_last_mib": round(last, 1),
                "growth": round(last / before - 1, 4), "flat": None}
    before, last = pair
    return {"window": window, "peak_before_mib": round(before, 1), "peak_last_mib": round(last, 1),
            "growth": round(last / before - 1, 4), "flat": last <= before * (1 + TOLERANCE)}


def _slope(values: list[float]) -> float:
    """Least-squares growth per step, in KiB."""
    n = len(values)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(values) / n
    num = sum((i - mx) * (v - my) for i, v in enumerate(values))
    den = sum((i - mx) ** 2 for i in range(n))
    return num / den * 1024.0


def soak_folder(n: int, size: int, work: Path) -> dict:
    """Segment ``n`` phantom images in one folder run, sampling RSS per image."""
    from PIL import Image

    from medclipsam import MedCLIPSAM
    from medclipsam.data import PhantomDataset

    images, out = work / "images", work / "out"
    images.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(PhantomDataset("breast", n, seed=11, size=size, split="test")):
        Image.fromarray(s.image).save(images / f"img{i:04d}.png")
    pipe = MedCLIPSAM.offline(device="cpu")
    csv_path = out / "results.csv"
    samples: list[tuple[int, float]] = []  # (rows finished, RSS)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                done = max(0, csv_path.read_bytes().count(b"\n") - 1)
            except OSError:
                done = 0
            samples.append((done, rss_mib()))
            stop.wait(0.1)

    start_rss = rss_mib()
    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    sampler.start()
    try:
        rows = pipe.run_folder(images, "breast tumor", out, progress=False)
    finally:
        stop.set()
        sampler.join()
        pipe.close()
    seconds = time.perf_counter() - t0
    per_image = [0.0] * n  # peak RSS while image i was being processed
    for done, rss in samples:
        i = min(done, n - 1)
        per_image[i] = max(per_image[i], rss)
    for i in range(1, n):  # an image finished between two samples: carry the last value on
        per_image[i] = per_image[i] or per_image[i - 1]
    return {
        "images": n, "size": size, "seconds": round(seconds, 1),
        "images_per_second": round(n / seconds, 2),
        "rows_ok": sum(r["status"] == "ok" for r in rows),
        "rss_before_mib": round(start_rss, 1), "rss_peak_mib": round(max(per_image), 1),
        **_verdict(per_image, WINDOW),
        "growth_per_image_kib": round(_slope(per_image[n // 3:]), 1),
    }


def soak_explorer(clicks: int) -> dict:
    """``clicks`` scripted explorer interactions, RSS after each."""
    from medclipsam.widgets import PromptExplorer

    ex = PromptExplorer.offline(per_task=2)
    names = list(ex.images)
    prompts = ["breast tumor", "a dark round lesion", "benign breast lesion", "brain tumor",
               "lungs", "hypoechoic mass", "lesion"]
    values: list[float] = []
    t0 = time.perf_counter()
    for k in range(clicks):
        h, w = ex.current.image.shape[:2]
        x, y = (k * 37) % (w - 2) + 1, (k * 53) % (h - 2) + 1
        action = k % 8
        if action in (0, 1):
            ex.add_point(x, y, positive=action == 0)
        elif action == 2:
            ex.set_box(x, y, w - 1 - x // 2, h - 1 - y // 2)
        elif action == 3:
            ex.clear_clicks()
        elif action in (4, 5):
            ex.set_prompt(prompts[(k // 8) % len(prompts)])
        elif action == 6:
            ex.select(names[(k // 8) % len(names)])
        else:
            ex.clear_clicks()
        if ex.last_error:
            raise RuntimeError(f"interaction {k}: {ex.last_error}")
        values.append(rss_mib())
    seconds = time.perf_counter() - t0
    warm = values[clicks // 3:]
    return {
        "interactions": clicks, "seconds": round(seconds, 1),
        "rss_peak_mib": round(max(values), 1), **_verdict(warm, WINDOW),
        "growth_per_interaction_kib": round(_slope(warm), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="images in the folder run (default 500)")
    p.add_argument("--clicks", type=int, default=300, help="explorer interactions (default 300)")
    p.add_argument("--size", type=int, default=128, help="phantom image side in pixels")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=None, help="folder for soak.json (default: a temporary one)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, a.threads))
    from _common import hardware_header

    print(hardware_header(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.out) if a.out else Path(tmp)
        report = {"folder_run": soak_folder(a.n, a.size, work / "folder"),
                  "explorer": soak_explorer(a.clicks)}
        print(json.dumps(report, indent=1))
        if a.out:
            (work / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    flats = [part["flat"] for part in report.values()]
    if any(f is False for f in flats):
        print("memory is NOT flat (see 'growth')", file=sys.stderr)
        return 1
    if any(f is None for f in flats):
        print("too short for the 5 % verdict (needs 200 images / 300 interactions); figures only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
