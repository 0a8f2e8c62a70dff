"""What the shared scoring saves: gScoreCAM's prompt-sensitivity check and a second prompt on an
image already seen, as multiples of one map, measured in one run.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/shared_scoring_speed.py \\
        --arch toy biomedclip --k 16 --threads 1

For each architecture (``toy``: the shipped toy CLIP; ``biomedclip``: BiomedCLIP's real loading
code, ``hf-hub:microsoft/BiomedCLIP-...`` resolved from a hub cache written offline with
``tests/hf_cache.py``, random weights, the real tokenizer) and each k, on phantom breast images:

* ``one map``: :func:`~medclipsam.saliency.saliency_maps` of the task prompt (what a user waits
  for first);
* ``check``: :func:`~medclipsam.saliency.prompt_sensitivity` (the prompt and four controls), which
  now scores the union of the five prompts' top-k channels once;
* ``unshared``: the same five maps the way the check used to run them (gScoreCAM on the image
  repeated five times: five times k masked images), for the before/after;
* ``2nd prompt``: one more prompt on the same image with a
  :class:`~medclipsam.saliency.gscorecam_multi.MaskedFeatureStore` that already holds the first
  prompt's and the controls' channels (what the explorer does);
* ``union/k``: masked images the check scored, per k.

Times are CPU seconds of this process (``time.process_time``; run with one thread so that CPU
seconds are the seconds of one unshared core) and every ratio is taken within the run. The 2048^2
fp32 matmul rate measured at the start says how fast the machine was.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # the package of this checkout, installed or not


def cpu_seconds(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn(*args, **kwargs)
    return time.process_time() - t0, out


def matmul_gflops(n: int = 1024, reps: int = 5, clock=time.process_time) -> float:
    """The fp32 n x n matmul rate in GFLOP/s, best of ``reps``, timed by ``clock`` (CPU seconds
    by default; ``time.perf_counter`` for wall clock)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t0 = clock()
        a @ b
        times.append(clock() - t0)
    return 2 * n**3 / max(min(times), 1e-9) / 1e9


def write_hub_cache() -> None:
    """BiomedCLIP's hub files (configuration, vocabulary; no weights) in a temporary cache, before
    huggingface_hub is imported (it reads ``HF_HUB_CACHE`` once)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from hf_cache import write_biomedclip_cache

    hub = write_biomedclip_cache(Path(tempfile.mkdtemp(prefix="medclipsam-bench-")) / "hf")
    os.environ["HF_HUB_CACHE"] = str(hub)
    os.environ["HF_HUB_OFFLINE"] = "1"


def load(arch: str):
    import torch

    from medclipsam.models import load_clip

    if arch == "toy":
        return load_clip("toy", device="cpu")

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: said in the header
        return load_clip("biomedclip", device="cpu")


def measure(clip, image, k: int, unshared: bool) -> dict:
    from medclipsam.data.phantom import PROMPTS
    from medclipsam.saliency import METHODS, PromptBatch, prompt_sensitivity, saliency_maps
    from medclipsam.saliency.gscorecam import gscorecam
    from medclipsam.saliency.gscorecam_multi import MaskedFeatureStore
    from medclipsam.saliency.sensitivity import control_prompts

    prompt = PROMPTS["breast"]
    saliency_maps(clip, image, prompt, "gscorecam", k=2)  # warm-up, not timed
    one, _ = cpu_seconds(saliency_maps, clip, image, prompt, "gscorecam", k=k)
    store = MaskedFeatureStore()
    check, rep = cpu_seconds(prompt_sensitivity, clip, image, prompt, METHODS["gscorecam"],
                             task="breast", warn=False, k=k, store=store)
    union = store.scored
    second, _ = cpu_seconds(saliency_maps, clip, image, "a hypoechoic mass", "gscorecam", k=k,
                            store=store)
    row = {"k": k, "one map s": one, "check s": check, "check / one": check / one,
           "union / k": union / k, "2nd prompt s": second, "2nd / one": second / one,
           "new channels": store.scored - union}
    if unshared:
        batch = PromptBatch(clip, image, [prompt, *control_prompts(prompt, "breast").values()])
        n = len(batch.prompts)
        images = batch.image_input.expand(n, -1, -1, -1).contiguous()
        old, maps = cpu_seconds(gscorecam, clip.model, images, batch.text_features, k=k)
        shared = batch.on_image(maps, normalize=False)
        diff = max(float(abs(shared[0] - rep.prompt_map).max()),
                   *(float(abs(shared[i + 1] - m).max()) for i, m in enumerate(rep.control_maps.values())))
        row |= {"unshared s": old, "unshared / one": old / one, "max |map diff|": diff}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["toy", "biomedclip"], choices=["toy", "biomedclip"])
    p.add_argument("--k", type=int, nargs="+", default=[16])
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-unshared", action="store_true", help="skip the (5x) unshared baseline")
    a = p.parse_args(argv)
    if "biomedclip" in a.arch:
        write_hub_cache()
    import torch

    torch.set_num_threads(a.threads)
    from _common import hardware_header, print_table

    from medclipsam.data.phantom import PhantomDataset

    print(hardware_header())
    print(f"1024^2 fp32 matmul now: {matmul_gflops():.0f} GFLOP/s (CPU time)", flush=True)
    images = [PhantomDataset("breast", a.images, seed=0, size=256, split="test")[i].rgb
              for i in range(a.images)]
    rows = []
    for arch in a.arch:
        clip = load(arch)
        print(f"arch {arch}: {'pretrained' if clip.pretrained else 'RANDOM weights'}", flush=True)
        for k in a.k:
            for i, image in enumerate(images):
                r = {"arch": arch, "image": i} | measure(clip, image, k, not a.no_unshared)
                rows.append(r)
                print({c: (round(v, 3) if isinstance(v, float) else v) for c, v in r.items()}, flush=True)
    print()
    print("CPU seconds of this process; ratios within the run")
    print_table(rows, floatfmt="{:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
