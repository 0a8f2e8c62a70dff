"""How long the prompt explorer takes to answer each kind of change (offline world, CPU).

    python benchmarks/explorer_latency.py [--threads 1] [--repeats 3]

Builds ``PromptExplorer.offline()`` and times, per change, the median of ``--repeats`` runs of what a
user waits for after touching a control: a new prompt (saliency, prompts, SAM decoding), a
threshold (prompts, decoding), a click (decoding only), another image (everything, the saliency of a
new image included), another SAM model (embedding, decoding), and the comparison of three prompts
(with their prompt sensitivity). Also prints the stages each change ran (the explorer's counters)
and the peak memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    from _common import hardware_header

    from medclipsam.models import load_sam
    from medclipsam.widgets import PromptExplorer

    print(hardware_header())
    t0 = time.perf_counter()
    ex = PromptExplorer.offline(per_task=2, sam_models={"second SAM": lambda: load_sam("litemedsam")})
    print(f"built (models loaded, first image shown): {time.perf_counter() - t0:.2f} s")
    names = list(ex.images)
    prompts = ["breast tumor", "a dark round lesion", "benign breast lesion", "hypoechoic mass",
               "breast cancer", "tumour", "lesion"]
    it = iter(prompts * 4)

    def timed(label: str, action) -> None:
        times, ran = [], {}
        for _ in range(a.repeats):
            before = dict(ex.counts)
            t = time.perf_counter()
            action()
            times.append(time.perf_counter() - t)
            ran = {k: ex.counts[k] - before[k] for k in before if ex.counts[k] != before[k]}
            if ex.last_error:
                raise RuntimeError(ex.last_error)
        print(f"{label:<34s} {statistics.median(times) * 1000:8.1f} ms   stages: {ran}")

    print(f"{'change':<34s} {'median':>11s}")
    timed("new prompt (gScoreCAM, the offline default k)", lambda: ex.set_prompt(next(it)))
    ex.postprocess.value = "threshold"
    thr = iter([0.2, 0.4, 0.6, 0.3, 0.5, 0.7] * 4)
    timed("threshold", lambda: setattr(ex.threshold, "value", next(thr)))
    ex.postprocess.value = "crf"
    xs = iter(range(60, 200, 7))
    timed("click (a positive point)", lambda: ex.add_point(next(xs), 120))
    ex.clear_clicks()
    order = iter(names[1:] + names[:1] + names[1:])
    timed("another image", lambda: ex.select(next(order)))
    sams = iter(["second SAM", "LiteMedSAM"] * 4)
    timed("another SAM model (then back)", lambda: setattr(ex.sam_picker, "value", next(sams)))
    ex.sam_picker.value = "LiteMedSAM"
    ex.select(names[0])
    timed("compare 3 prompts (+ sensitivity)", lambda: ex.compare([next(it), next(it), next(it)]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS) {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
