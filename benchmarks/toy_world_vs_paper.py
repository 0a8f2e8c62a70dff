"""Does the toy world behave like the paper? The toy CLIP's acceptance table (issue 12), measured on
held-out phantom test images, beside the paper's numbers.

    python benchmarks/toy_world_vs_paper.py [--n 20] [--m2ib] [--threads 1] [--boot 2000]

Every row is the whole zero-shot pipeline of :meth:`medclipsam.MedCLIPSAM.offline` (toy CLIP, the
saliency method of the row, its post-processing and SAM prompts, LiteMedSAM, the task presets); only the
named setting changes. Each image's saliency map is computed once per method and reused across the
post-processing and SAM-prompt rows. Mean Dice per task with a 95 % bootstrap interval over images;
the gates are paired differences over the same images (bootstrap intervals too).

Gates (issue 12): 1. gScoreCAM ahead of GradCAM by >= 0.10 on average and not behind on any task;
gScoreCAM with its top-k ahead of ScoreCAM over all channels. 2. the task prompt >= 0.30 above a
wrong-organ prompt on every task; gScoreCAM's prompt sensitivity >= 0.1 on every task (a nonsense
prompt is reported, not gated). 3. the default pipeline >= 0.70 on every task, the random-map control
>= 0.2 lower. 4. zero patch gradient at the reference layer, non-zero at the default one.
The paper's rows (MedCLIP-SAMv2, arXiv 2409.19483, average DSC %) are printed beside the toy's.
Takes about 25 min on one core of a 2-core CPU at --n 20 (add about 10 min with --m2ib).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware_header  # noqa: E402

from medclipsam import MedCLIPSAM  # noqa: E402
from medclipsam.data.phantom import PROMPTS, TASKS, PhantomDataset, generate_sample  # noqa: E402
from medclipsam.metrics import dice  # noqa: E402
from medclipsam.saliency import resolve_target_layer  # noqa: E402
from medclipsam.saliency.api import METHODS  # noqa: E402
from medclipsam.saliency.sensitivity import prompt_sensitivity  # noqa: E402

WRONG_ORGAN = {"breast": "brain tumor", "brain": "breast tumor", "xray": "brain tumor"}
NONSENSE = "xq zvv blorp"
#: The paper's average DSC (%) over its tasks, where MedCLIP-SAMv2 gives one (its Table 5 and ablation).
PAPER = {
    "GradCAM": 30.1, "gScoreCAM (k = 300 of 768)": 60.5, "M2IB": 77.6,
    "zero-shot (default)": 76.7, "saliency alone, no DHN-NCE": 46.2, "saliency + DHN-NCE": 49.1,
}


def _ci(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> tuple[float, float, float]:
    values = np.asarray(values, dtype=float)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _fmt(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> str:
    m, lo, hi = _ci(values, rng, n_boot)
    return f"{m:.3f} [{lo:.2f}, {hi:.2f}]"


def run_settings(pipe: MedCLIPSAM, data: dict, k: int, m2ib: bool) -> dict[str, dict[str, np.ndarray]]:
    """Per-image Dice of every row, per task."""
    all_channels = 1 << 20  # more than any layer has: k is clipped to the layer's channels (ScoreCAM)
    methods = {"gScoreCAM, top-k (default)": {"saliency": "gscorecam", "k": k},
               "ScoreCAM, all channels": {"saliency": "gscorecam", "k": all_channels},
               "GradCAM": {"saliency": "gradcam"}, "random map (control)": {"saliency": "random"}}
    if m2ib:
        methods["M2IB"] = {"saliency": "m2ib"}
    rows: dict[str, dict[str, np.ndarray]] = {}
    for task in TASKS:
        samples = data[task]
        images = [s.rgb for s in samples]

        def score(name: str, out, task: str = task, samples: list = samples) -> None:
            rows.setdefault(name, {})[task] = np.array([dice(r.mask, s.mask) for r, s in zip(out, samples)])

        default_maps = None
        for name, over in methods.items():
            out = pipe.predict(images, PROMPTS[task], task=task, **over)
            score(name, out)
            if name.startswith("gScoreCAM"):
                default_maps = [r.saliency for r in out]
        for name, prompt in (("wrong-organ prompt", WRONG_ORGAN[task]), ("nonsense prompt", NONSENSE)):
            score(name, pipe.predict(images, prompt, task=task))
        for post in ("kmeans", "crf"):
            if post != pipe.config.postprocess:
                score(f"post-processing: {post}", pipe.predict(images, PROMPTS[task], task=task,
                                                               maps=default_maps, postprocess=post))
        for mode in ("box", "points", "box+points"):
            if mode != pipe.config.sam_prompt_mode:
                score(f"SAM prompts: {mode}", pipe.predict(images, PROMPTS[task], task=task,
                                                           maps=default_maps, sam_prompt_mode=mode))
        print(f"  {task} done", flush=True)
    return rows


def sensitivity(pipe: MedCLIPSAM, data: dict, k: int, n: int) -> dict[str, float]:
    out = {}
    for task in TASKS:
        vals = [prompt_sensitivity(pipe.clip, s.rgb, PROMPTS[task], METHODS["gscorecam"], task=task,
                                   warn=False, k=k).sensitivity for s in data[task][:n]]
        out[task] = float(np.mean(vals))
    return out


def layer_gradients(pipe: MedCLIPSAM) -> dict[str, float]:
    clip = pipe.clip
    x = clip.prepare(generate_sample("breast", 3, size=224, label="malignant").rgb)[0][None]
    with torch.no_grad():
        t = clip.model.encode_text(clip.tokenize([PROMPTS["breast"]]))
    out = {}
    for preset in ("reference", "default"):
        target = resolve_target_layer(clip.model, preset=preset)
        store = {}

        def keep(_m, _i, o, store=store):
            o.retain_grad()
            store["a"] = o

        h = target.module.register_forward_hook(keep)
        (clip.model.encode_image(x) @ t.t()).sum().backward()
        h.remove()
        clip.model.zero_grad(set_to_none=True)
        out[f"{preset} ({target.name})"] = float(target.to_grid(store["a"].grad).abs().max())
    return out


def _gates(rows, sens, grads, rng, n_boot) -> list[tuple[str, bool, str]]:
    d = rows["gScoreCAM, top-k (default)"]

    def diff(other: str) -> tuple[dict[str, float], float, tuple[float, float]]:
        per = {t: float(np.mean(d[t] - rows[other][t])) for t in TASKS}
        avg = np.mean([d[t] - rows[other][t] for t in TASKS], axis=0)
        m, lo, hi = _ci(avg, rng, n_boot)
        return per, m, (lo, hi)

    out = []
    per, m, ci = diff("GradCAM")
    out.append(("1a gScoreCAM - GradCAM >= 0.10 on average, >= 0 per task",
                m >= 0.10 and min(per.values()) >= 0, f"avg {m:+.3f} [{ci[0]:+.2f}, {ci[1]:+.2f}], "
                + ", ".join(f"{t} {v:+.3f}" for t, v in per.items())))
    per, m, ci = diff("ScoreCAM, all channels")
    out.append(("1b gScoreCAM top-k ahead of ScoreCAM over all channels", m > 0,
                f"avg {m:+.3f} [{ci[0]:+.2f}, {ci[1]:+.2f}], " + ", ".join(f"{t} {v:+.3f}" for t, v in per.items())))
    per, _, _ = diff("wrong-organ prompt")
    out.append(("2a task prompt - wrong-organ prompt >= 0.30 on every task", min(per.values()) >= 0.30,
                ", ".join(f"{t} {v:+.3f}" for t, v in per.items())))
    out.append(("2b gScoreCAM prompt sensitivity >= 0.1 on every task", min(sens.values()) >= 0.1,
                ", ".join(f"{t} {v:.2f}" for t, v in sens.items())))
    means = {t: float(d[t].mean()) for t in TASKS}
    out.append(("3a default pipeline Dice >= 0.70 on every task", min(means.values()) >= 0.70,
                ", ".join(f"{t} {v:.3f}" for t, v in means.items())))
    per, _, _ = diff("random map (control)")
    out.append(("3b random-map control >= 0.2 lower on every task", min(per.values()) >= 0.2,
                ", ".join(f"{t} {v:+.3f}" for t, v in per.items())))
    ref, default = grads.values()
    out.append(("4 zero patch gradient at the reference layer, non-zero at the default", ref == 0 and default > 0,
                ", ".join(f"{k}: max |grad| {v:.3g}" for k, v in grads.items())))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="test images per task (each with a finding)")
    p.add_argument("--n-sensitivity", type=int, default=5)
    p.add_argument("--m2ib", action="store_true", help="add M2IB (slow on a CPU)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--boot", type=int, default=2000)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(hardware_header())
    t0 = time.perf_counter()
    pipe = MedCLIPSAM.offline()
    k = pipe.config.k
    print(f"toy pipeline: {pipe.config}\n{a.n} test images per task with a finding\n")
    data = {t: list(PhantomDataset(t, a.n, seed=0, size=256, split="test", normal_fraction=0.0)) for t in TASKS}
    rows = run_settings(pipe, data, k, a.m2ib)
    sens = sensitivity(pipe, data, k, a.n_sensitivity)
    grads = layer_gradients(pipe)
    rng = np.random.default_rng(0)
    header = f"| setting | {' | '.join(TASKS)} | average | paper (avg DSC %) |"
    print(header + "\n|" + "---|" * (len(TASKS) + 3))
    paper_of = {"gScoreCAM, top-k (default)": PAPER["gScoreCAM (k = 300 of 768)"], "GradCAM": PAPER["GradCAM"],
                "M2IB": PAPER["M2IB"]}
    for name, per in rows.items():
        avg = np.mean([per[t] for t in TASKS], axis=0)
        cells = [_fmt(per[t], rng, a.boot) for t in TASKS] + [_fmt(avg, rng, a.boot)]
        paper = paper_of.get(name)
        print(f"| {name} | {' | '.join(cells)} | {'' if paper is None else paper} |")
    print(f"\nprompt sensitivity of gScoreCAM (k = {k}, first {a.n_sensitivity} images): "
          + ", ".join(f"{t} {v:.2f}" for t, v in sens.items()))
    print("\ngates:")
    failed = 0
    for name, ok, detail in _gates(rows, sens, grads, rng, a.boot):
        failed += not ok
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}")
    print(f"\n{failed} gate(s) failed; {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
