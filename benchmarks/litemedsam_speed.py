"""LiteMedSAM's image encoder on this CPU: what speeds it up while the masks stay the same.

    python benchmarks/litemedsam_speed.py [--repeats 5] [--threads 2] [--compile]

Times the encoder (one 256 x 256 image, the median of ``--repeats`` after a warm-up) as trained,
with its Conv2d+BatchNorm pairs fused into single convolutions, in channels-last memory format,
both together, and (``--compile``) under ``torch.compile``; each variant's speed is a ratio to the
plain encoder measured in the same run, beside the machine's fp32 matmul rate. For every variant
it checks, on phantom images of each task with their ground-truth boxes, that the masks are the
plain encoder's (largest logit difference and the share of differing mask pixels).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware_header, print_table  # noqa: E402


def _matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        t.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(t) / 1e9


def _time(encoder: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        encoder(x)
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            encoder(x)
            t.append(time.perf_counter() - t0)
    return statistics.median(t)


def main(argv: list[str] | None = None) -> int:
    from medclipsam.data.phantom import TASKS, PhantomDataset
    from medclipsam.models.litemedsam import fuse_conv_bn, load_litemedsam
    from medclipsam.sam_session import SamSession

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--images", type=int, default=3, help="phantom images per task for the mask check")
    p.add_argument("--compile", action="store_true", help="also try torch.compile (slow to build)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(hardware_header())
    base = load_litemedsam(device="cpu", fast=False)  # as trained; the package loads it fused + channels-last
    x = torch.rand(1, 3, 256, 256)
    variants: dict[str, torch.nn.Module] = {"as trained": base.model.image_encoder}
    fused = copy.deepcopy(base.model.image_encoder)
    print(f"fused {fuse_conv_bn(fused)} Conv2d+BatchNorm pairs")
    variants["fused conv+BN"] = fused.eval()
    variants["channels-last"] = copy.deepcopy(base.model.image_encoder).to(memory_format=torch.channels_last)
    variants["fused + channels-last (the package's)"] = copy.deepcopy(fused).to(
        memory_format=torch.channels_last)
    if a.compile:
        variants["torch.compile"] = torch.compile(copy.deepcopy(base.model.image_encoder))
    gflops = _matmul_gflops()
    samples = [s for t in TASKS for s in PhantomDataset(t, a.images, split="test", normal_fraction=0.0)]
    from litemedsam_boxes import component_boxes

    def masks_with(encoder: torch.nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
        pred = copy.copy(base)
        pred.model = copy.copy(base.model)
        pred.model.image_encoder = encoder
        out = []
        with SamSession(pred) as session:
            for s in samples:
                session.set_image(s.rgb)
                r = session.predict(component_boxes(s.mask > 0))
                out.append((r.mask, r.low_res_logits))
        return out

    ref = masks_with(variants["as trained"])
    rows, t0 = [], None
    for name, enc in variants.items():
        t = _time(enc, x, a.repeats)
        t0 = t0 or t
        got = masks_with(enc)
        rows.append({
            "encoder": name, "s per image": f"{t:.3f}", "speed-up": f"{t0 / t:.2f}x",
            "max |logit diff|": f"{max(float(np.abs(g[1] - r[1]).max()) for g, r in zip(got, ref)):.1e}",
            "mask pixels differing": f"{max(float((g[0] != r[0]).mean()) for g, r in zip(got, ref)):.1e}",
        })
    print(f"\nmatmul rate: {gflops:.0f} GFLOP/s fp32 (1024^2)")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
