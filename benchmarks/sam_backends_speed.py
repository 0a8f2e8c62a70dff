"""Seconds per image of each segmenter ``medclipsam compare`` can put side by side.

    python benchmarks/sam_backends_speed.py [--images 2] [--backends vit_b,medsam,sam2-tiny,...]
                                            [--device cpu|cuda] [--threads T] [--csv FILE]

Every model is built at its **full published size with random weights** (no hub here), so the
timings are those of the real models while the masks mean nothing: SAM ViT-B/ViT-H
(segment_anything), MedSAM (SAM ViT-B with MedSAM's input conventions), SAM 2.1 tiny / small /
base-plus / large (transformers' Sam2Model, the image part), SAM 3 (transformers' Sam3Model, the
image detector with its text encoder). Per image: ``embed`` (the image encoder, once per image),
``decode`` (one box prompt for the SAMs; the text phrase for SAM 3: text encoder, DETR
encoder/decoder and mask head) and their sum, in wall-clock seconds, and ``cpu_s_per_image``: the
process's CPU seconds for the same work (with one thread, what the wall time would be on an idle
core: it does not grow when other jobs share the core). Images are 256 x 320 phantoms (every model resizes
to its own input size, so the image size hardly matters). The MedCLIP-SAM rows of a comparison add
the CLIP saliency time on top (``benchmarks/pipeline_speed.py``: gScoreCAM, k = 300, on BiomedCLIP).

On the project's 2-core CPU, run it on one core beside other work::

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/sam_backends_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import hardware_header, print_table  # noqa: E402

ALL = ("vit_b", "medsam", "vit_h", "sam2-tiny", "sam2-small", "sam2-base-plus", "sam2-large", "sam3")
DEFAULT = ("vit_b", "medsam", "sam2-tiny", "sam2-small", "sam2-base-plus", "sam2-large", "sam3")


def _build(name: str, device: str):
    """(predictor or SAM 3 model, parameter count) with random weights at full size."""
    import torch

    torch.manual_seed(0)
    if name in ("vit_b", "vit_h", "medsam"):
        from segment_anything import SamPredictor

        from medclipsam.models.sam import MedSamPredictor, build_sam

        sam = build_sam("vit_b" if name == "medsam" else name).to(device).eval()
        pred = MedSamPredictor(sam) if name == "medsam" else SamPredictor(sam)
        return pred, sum(p.numel() for p in sam.parameters())
    if name.startswith("sam2-"):
        from medclipsam.models.sam2 import build_sam2

        pred = build_sam2(name[len("sam2-"):], device=device)
        return pred, sum(p.numel() for p in pred.hf.parameters())
    if name == "sam3":
        from medclipsam.models.sam3 import build_sam3

        model = build_sam3("full", device=device)
        return model, sum(p.numel() for p in model.hf.parameters())
    raise ValueError(f"unknown backend {name!r}; choose from {ALL}")


def _time_one(model, image: np.ndarray, box: np.ndarray, sync) -> dict[str, float]:
    """Wall and CPU seconds of the embedding and the decoding of one image."""
    clocks = (time.perf_counter, time.process_time)
    if hasattr(model, "segment"):  # SAM 3: text alone
        embed, decode = (lambda: model.set_image(image)), (lambda: model.segment("breast lesion"))
        ctx = None
    else:
        from medclipsam.sam_session import SamSession

        ctx = SamSession(model)
        embed, decode = (lambda: ctx.set_image(image)), (lambda: ctx.predict(box))
    t0 = [c() for c in clocks]
    embed()
    sync()
    t1 = [c() for c in clocks]
    decode()
    sync()
    t2 = [c() for c in clocks]
    if ctx is not None:
        ctx.close()
    return {"embed": t1[0] - t0[0], "decode": t2[0] - t1[0],
            "embed_cpu": t1[1] - t0[1], "decode_cpu": t2[1] - t1[1]}


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--backends", default=",".join(DEFAULT), help=f"comma-separated, from {', '.join(ALL)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--csv", help="also write the table here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from medclipsam.data.phantom import PhantomDataset

    print(hardware_header())
    print("load average (1, 5, 15 min):", os.getloadavg())
    sys.stdout.flush()
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    samples = [PhantomDataset("breast", a.images, seed=0, size=256, normal_fraction=0.0)[i]
               for i in range(a.images)]
    images = [np.ascontiguousarray(np.pad(s.rgb, ((0, 0), (32, 32), (0, 0)))) for s in samples]  # 256 x 320
    boxes = [np.array([40.0, 60.0, 200.0, 180.0])] * len(images)
    rows = []
    for name in [b.strip() for b in a.backends.split(",") if b.strip()]:
        t0 = time.perf_counter()
        model, n_params = _build(name, a.device)
        build = time.perf_counter() - t0
        with torch.no_grad():
            times = [_time_one(model, im, bx, sync) for im, bx in zip(images, boxes)]
        mean = {k: float(np.mean([t[k] for t in times])) for k in times[0]}
        rows.append({
            "backend": name, "params_M": round(n_params / 1e6, 1), "build_s": round(build, 1),
            "embed_s": round(mean["embed"], 2), "decode_s": round(mean["decode"], 3),
            "s_per_image": round(mean["embed"] + mean["decode"], 2),
            "cpu_s_per_image": round(mean["embed_cpu"] + mean["decode_cpu"], 2),
            "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        })
        print_table(rows[-1:], "{}")
        sys.stdout.flush()
        del model
        gc.collect()
    print()
    print("load average (1, 5, 15 min):", os.getloadavg())
    print_table(rows, "{}")
    if a.csv:
        with open(a.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
