"""Behaviour unchanged? Run MedCLIPSAM.offline() on 3 phantom test images per task and save, or compare
bit for bit with a saved run: masks, saliency maps, coarse masks, boxes and Dice (a refactoring check).

    python benchmarks/masks_before_after.py save OUT.npz      # on the code before the change
    python benchmarks/masks_before_after.py compare OUT.npz   # on the code after it
        [NAME=VALUE ...]  # PipelineConfig settings, e.g. the defaults of the code before the change
                          # when they have changed since: k=48 box_margin=0 within_content=False
"""
import ast
import sys

import numpy as np

import medclipsam
from medclipsam import MedCLIPSAM
from medclipsam.data.phantom import PROMPTS, PhantomDataset
from medclipsam.vocab import TASKS

print("medclipsam from", medclipsam.__file__)
settings = dict(arg.split("=", 1) for arg in sys.argv[3:])
settings = {k: ast.literal_eval(v) for k, v in settings.items()}
pipe = MedCLIPSAM.offline(**settings)
print(pipe.config)
out = {}
for task in TASKS:
    samples = list(PhantomDataset(task, 3, split="test", normal_fraction=0.0))
    res = pipe.predict([s.rgb for s in samples], PROMPTS[task], task=task)
    for i, r in enumerate(res):
        out[f"{task}_{i}_mask"] = r.mask
        out[f"{task}_{i}_saliency"] = r.saliency
        out[f"{task}_{i}_coarse"] = r.coarse_mask
        out[f"{task}_{i}_boxes"] = np.asarray([] if r.boxes is None else r.boxes)
        dice = 2 * (r.mask & samples[i].mask).sum() / (r.mask.sum() + samples[i].mask.sum() + 1e-9)
        out[f"{task}_{i}_dice"] = np.float64(dice)
mode, path = sys.argv[1], sys.argv[2]
if mode == "save":
    np.savez(path, **out)
    print("saved", len(out), "arrays;", {k: round(float(v), 4) for k, v in out.items() if k.endswith("dice")})
else:
    ref = np.load(path)
    assert set(ref.files) == set(out), "different keys"
    bad = [k for k in ref.files if not (ref[k].shape == out[k].shape and np.array_equal(ref[k], out[k]))]
    print("compared", len(ref.files), "arrays (mask, saliency, coarse mask, boxes, dice for 9 images):",
          "ALL IDENTICAL" if not bad else f"DIFFERENT: {bad}")
    print({k: round(float(v), 4) for k, v in out.items() if k.endswith("dice")})
    sys.exit(1 if bad else 0)
