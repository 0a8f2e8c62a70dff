"""Seconds per image for each stage of the zero-shot pipeline, on the real architectures.

    python benchmarks/pipeline_speed.py [--images 2] [--k 300] [--precision fp32|fast]
                                        [--sam vit_b|vit_h] [--device cpu|cuda] [--threads T]

BiomedCLIP (open_clip's hf-hub model: timm ViT-B/16 + PubMedBERT) and SAM are built with **random
weights** (offline: a Hugging Face cache folder with BiomedCLIP's configs only is written to a
temporary directory, and SAM comes from segment_anything's own builder), so the timings are those
of the real models while the masks mean nothing. Stages: saliency (gScoreCAM, k channels),
prompts (CRF + boxes), SAM image embedding, SAM decoding. Run it on a GPU machine with
``--device cuda --precision fast``. ``benchmarks/zeroshot_toy.py`` times the toy world.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # hf_cache: BiomedCLIP's configs, no weights
from _common import hardware_header, print_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--k", type=int, default=300)
    p.add_argument("--precision", default="fp32", choices=("fp32", "fast"))
    p.add_argument("--sam", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    from hf_cache import write_biomedclip_cache
    from segment_anything import SamPredictor, sam_model_registry

    from medclipsam.data.phantom import PhantomDataset
    from medclipsam.models import load_clip
    from medclipsam.pipeline import MedCLIPSAM

    print(hardware_header())
    with tempfile.TemporaryDirectory() as hub:
        write_biomedclip_cache(hub)
        os.environ["HF_HUB_CACHE"] = hub
        os.environ["HF_HUB_OFFLINE"] = "1"
        from huggingface_hub import constants

        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = hub, True
        clip = load_clip("biomedclip", pretrained=False, device=a.device)
    torch.manual_seed(0)
    sam = sam_model_registry[a.sam](checkpoint=None).to(a.device).eval()
    pipe = MedCLIPSAM(clip, SamPredictor(sam), k=a.k, saliency_kwargs={"precision": a.precision})
    print(f"BiomedCLIP architecture + SAM {a.sam}, random weights; gScoreCAM k={a.k} {a.precision}; "
          f"device {a.device}\n")
    images = [s.rgb for s in PhantomDataset("breast", a.images, seed=0, size=256, split="test")]
    pipe.predict(images[0], "breast tumor")  # warm-up (and the fast mode's cast copy), not timed
    rows = []
    for i, im in enumerate(images[1:] + images[:1]):
        # a new image each time, so the SAM embedding is really computed
        res = pipe.predict(np.ascontiguousarray(im[:, ::-1]) if i % 2 else im, "breast tumor")
        rows.append({k: v for k, v in res.timings.items()})
    print_table([{"stage": k, "s_per_image": f"{np.mean([r[k] for r in rows]):.3f}"} for k in rows[0]])
    pipe.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
