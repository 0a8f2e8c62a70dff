"""The size guard: seconds per image for a phantom saved as PNG at 256, 1024 and 8000 pixels.

    python benchmarks/size_guard.py [--sides 256 1024 8000] [--rounds 3] [--threads 1]

Images larger than ``PipelineConfig.max_side`` (1024) are processed at 1024 px and the results
mapped back (flag ``large_image_downscaled``); what remains of an 8000x8000 image's cost is
decoding its 64 million pixels and writing the full-size saliency map and masks. Files are read
by ``MedCLIPSAM.predict`` from disk, as in a folder run; sizes are run in turn so that no SAM
embedding is reused. ``--no-guard`` sets ``max_side=None`` (minutes per 8000 px image).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware_header, print_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[256, 1024, 8000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-guard", action="store_true")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from medclipsam import MedCLIPSAM
    from medclipsam.data import PhantomDataset

    torch.set_num_threads(args.threads)
    print(hardware_header())
    s = PhantomDataset("breast", 1, seed=3, size=256, split="test", normal_fraction=0.0)[0]
    pipe = MedCLIPSAM.offline(postprocess="kmeans", **({"max_side": None} if args.no_guard else {}))
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for side in args.sides:
            files[side] = Path(tmp) / f"breast_{side}.png"
            big = Image.fromarray(s.image).resize((side, side), Image.BILINEAR)
            big.save(files[side], compress_level=1)
        pipe.predict(str(files[args.sides[0]]), "breast tumor")  # warm-up
        times: dict[int, list[float]] = {k: [] for k in files}
        flags: dict[int, str] = {}
        for _ in range(args.rounds):
            for side, path in files.items():
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = pipe.predict(str(path), "breast tumor")
                times[side].append(time.perf_counter() - t)
                flags[side] = " ".join(res.flags) or "-"
                assert res.mask.shape == (side, side) and np.isfinite(res.saliency).all()
    base = statistics.median(times[args.sides[0]])
    rows = [{"side": f"{k}x{k}", "seconds (median)": statistics.median(v),
             f"x {args.sides[0]} px": statistics.median(v) / base, "flags": flags[k]}
            for k, v in times.items()]
    print_table(rows, floatfmt="{:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
