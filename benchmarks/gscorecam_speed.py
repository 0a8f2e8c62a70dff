"""How fast is gScoreCAM? Seconds per image for each k and precision, and the fast mode's fidelity.

    python benchmarks/gscorecam_speed.py [--k 32 100 300] [--images N] [--device cpu|cuda]
        [--precision fp32 fast] [--arch biomedclip|toy] [--batch-size B] [--threads T]

``--arch biomedclip`` builds BiomedCLIP's image tower (timm ViT-B/16, 224 px, the published
open_clip config) with random weights and a tiny text tower, offline: gScoreCAM only needs the
image tower and a text feature (a fixed random vector here). ``--arch toy`` uses the shipped toy
CLIP and the task prompt. Images are phantom images (one call per image, k masked images
each); a short warm-up call per setting (k <= 8; in fast mode it makes the cast copy) is not
timed. CUDA timings are synchronised. The fast mode's maps are compared with fp32's (Pearson
correlation per image, the mean printed) when both precisions run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware_header, print_table  # noqa: E402

#: BiomedCLIP's published open_clip image-tower configuration (random weights here).
BIOMEDCLIP_VISION = {
    "timm_model_name": "vit_base_patch16_224",
    "timm_model_pretrained": False,
    "timm_pool": "",
    "timm_proj": "linear",
    "image_size": 224,
}


def build(arch: str, device: str) -> tuple[torch.nn.Module, torch.Tensor, list[torch.Tensor]]:
    """Model, one text feature [1, D] and a list of preprocessed images [1, 3, 224, 224]."""
    from medclipsam.data.phantom import PROMPTS, PhantomDataset
    from medclipsam.models.clip import prepare_image

    if arch == "toy":
        from medclipsam.models import load_clip

        clip = load_clip("toy", device=device)
        model = clip.model
        with torch.no_grad():
            text = model.encode_text(clip.tokenize([PROMPTS["breast"]])).float()
    else:
        from open_clip.model import CustomTextCLIP

        torch.manual_seed(0)
        tiny_text = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
        model = CustomTextCLIP(embed_dim=512, vision_cfg=BIOMEDCLIP_VISION, text_cfg=tiny_text)
        model = model.to(device).eval()
        text = torch.randn(1, 512, generator=torch.Generator().manual_seed(1)).to(device)
    ds = PhantomDataset("breast", 16, seed=0, size=224, split="test")
    images = [prepare_image(ds[i].rgb, 224)[0][None].to(device) for i in range(len(ds))]
    return model, text, images


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(device: str, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best-of-``reps`` GFLOP/s of an n x n matmul: how fast this machine is right now (on a shared
    CPU the seconds per image only mean something next to it)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main(argv: list[str] | None = None) -> int:
    from medclipsam.saliency.gscorecam import gscorecam
    from medclipsam.saliency.gscorecam_fast import default_batch_size, fast_dtype

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, nargs="+", default=[32, 100, 300])
    p.add_argument("--images", type=int, default=3, help="timed images per setting")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", nargs="+", default=["fp32", "fast"], choices=["fp32", "fast"])
    p.add_argument("--arch", default="biomedclip", choices=["biomedclip", "toy"])
    p.add_argument("--batch-size", type=int, default=None, help="default: chosen from the device")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    print(hardware_header())
    model, text, pool = build(a.arch, a.device)
    images = [pool[i % len(pool)] for i in range(a.images)]
    bs = a.batch_size or default_batch_size(a.device)
    fdt = fast_dtype(a.device)
    rates = f"fp32 {matmul_rate(a.device, torch.float32):.0f}"
    if fdt != torch.float32:
        rates += f", {str(fdt).removeprefix('torch.')} {matmul_rate(a.device, fdt):.0f}"
    print(
        f"arch {a.arch} ({sum(q.numel() for q in model.parameters()) / 1e6:.1f} M parameters), "
        f"device {a.device}, scoring batch {bs}, fast dtype {fdt}\n"
        f"2048^2 matmul now: {rates} GFLOP/s\n"
    )
    rows = []
    for k in a.k:
        maps: dict[str, list[torch.Tensor]] = {}
        for precision in a.precision:
            out, times = [], []
            # Warm-up (not timed): kernels, allocator, and fast mode's cast copy of the model.
            gscorecam(model, images[0], text, k=min(k, 8), batch_size=bs, precision=precision)
            for x in images:
                _sync(a.device)
                t0 = time.perf_counter()
                m = gscorecam(model, x, text, k=k, batch_size=bs, precision=precision)
                _sync(a.device)
                times.append(time.perf_counter() - t0)
                out.append(m.float().cpu())
            maps[precision] = out
            row = {"k": k, "precision": precision, "s_per_image": float(np.mean(times)),
                   "min_s": float(np.min(times)), "corr_vs_fp32": "-"}
            if precision != "fp32" and "fp32" in maps:
                r = [np.corrcoef(f.ravel(), e.ravel())[0, 1] for f, e in zip(out, maps["fp32"])]
                row["corr_vs_fp32"] = f"{np.mean(r):.4f} (min {np.min(r):.4f})"
            rows.append(row)
            print(f"k={k} {precision}: {row['s_per_image']:.3f} s/image", flush=True)
    print()
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
