# %% [markdown]
# # Exercise 3 · From a saliency map to box prompts for SAM
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medclipsam/medclipsam/blob/main/notebooks/exercises/ex03_boxes.ipynb)
#
# Stage 3 of MedCLIP-SAM: the saliency map of stage 2 says roughly where the prompt is; SAM needs
# **box prompts** to cut out a precise mask. In between:
#
# 1. a **coarse mask**: which pixels of the map are "salient"? (here: 1-D k-means with two clusters,
#    MedCLIP-SAMv2's default);
# 2. its **connected components**, the largest one (or two: a chest X-ray has two lungs);
# 3. one **box** per component, in SAM's coordinates.
#
# You write steps 1 and 2-3, an autograder checks them against `medclipsam.prompting`, and then your
# boxes prompt LiteMedSAM (a real medical SAM) on phantom images. About 45 minutes; a CPU is enough.
#
# Fill in the cells marked `# YOUR CODE HERE` (delete `raise NotImplementedError()`) and run the check
# below each one until it says `[PASS]`.

# %%
# Colab only: install the package into the runtime (JupyterLab and Binder users have it already),
# with the extras this notebook uses: crf, the dense CRF of the coarse masks (builds in about a minute).
import subprocess
import sys

if "google.colab" in sys.modules:
    url = "git+https://github.com/medclipsam/medclipsam.git"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"medclipsam[crf] @ {url}"], check=True)

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
WORLD = "offline"  # the exercises run in the offline world (toy CLIP, LiteMedSAM, phantom images, any CPU)
SMOKE = False    # CI: fewer random cases and images
SEED = 0         # seed of the random cases and the phantom images

# %%
import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage as ndi

from medclipsam import MedCLIPSAM
from medclipsam import exercises as ex
from medclipsam.data.phantom import PROMPTS, PhantomDataset
from medclipsam.metrics import dice
from medclipsam.prompting import make_sam_prompts
from medclipsam.viz import overlay, sample_grid

if WORLD != "offline":
    raise ValueError("the exercises run in the offline world: set WORLD = 'offline'")
N_TRIALS = 3 if SMOKE else 10


# %% [markdown]
# ## Step 1 · The coarse mask: 1-D k-means
#
# A saliency map $s$ is an $H \times W$ array in $[0, 1]$. Split its values into two clusters,
# "background" and "salient", with **k-means** ($k = 2$) on the values alone:
#
# 1. start the two centres at the minimum and the maximum of $s$;
# 2. threshold $t$ = the midpoint of the centres; a pixel is salient when $s > t$;
# 3. move each centre to the mean of its pixels' values;
# 4. repeat 2-3 until the centres stop moving (at most 100 times).
#
# The mask is $s > t$ for the final $t$. A constant map (max = min) has nothing salient: return an
# all-`False` mask. This adapts to each map, where a fixed threshold (0.5, or MedCLIP-SAMv2's 0.3) does
# not: a map whose values never reach 0.5 still gets a mask.
#
# **Your task:** `saliency_to_mask(saliency)` → a boolean array of the same shape.

# %% tags=["solution"]
def saliency_to_mask(saliency: np.ndarray) -> np.ndarray:
    """Salient pixels of a map in [0, 1] by 1-D k-means with two clusters (s > threshold)."""
    ### BEGIN SOLUTION
    s = np.asarray(saliency, dtype=np.float64)
    lo, hi = float(s.min()), float(s.max())
    if hi <= lo:
        return np.zeros(s.shape, dtype=bool)
    c0, c1 = lo, hi
    for _ in range(100):
        t = 0.5 * (c0 + c1)
        fg = s > t
        if fg.all() or not fg.any():
            break
        new0, new1 = float(s[~fg].mean()), float(s[fg].mean())
        if (new0, new1) == (c0, c1):
            break
        c0, c1 = new0, new1
    return s > 0.5 * (c0 + c1)
    ### END SOLUTION


# %% tags=["check"]
ex.check_saliency_to_mask(saliency_to_mask, n_trials=N_TRIALS, seed=SEED, strict=True);


# %% [markdown]
# ## Step 2 · Components and boxes
#
# SAM takes a box as **`[x0, y0, x1, y1]`**, with **x the column** and **y the row** (NumPy indexes
# `mask[row, col]`, so the order flips), and, in this package, **inclusive** corners: `x1` is the last
# column of the object, not one past it.
#
# - **Components** are 8-connected: pixels touching at a corner belong together.
#   `scipy.ndimage.label(mask, structure=np.ones((3, 3)))` labels them 1, 2, ... (its default is
#   4-connectivity: pass the structure).
# - Keep the `n_components` **largest** (all of them when `n_components` is None); equal sizes: the
#   component labelled first wins.
# - One box per kept component, the boxes sorted **left to right** by `x0` (then `y0`).
# - An empty mask has no box: return `np.zeros((0, 4))`.
#
# **Your task:** `mask_to_boxes(mask, n_components=1)` → an `(N, 4)` float array.

# %% tags=["solution"]
def mask_to_boxes(mask: np.ndarray, n_components: int | None = 1) -> np.ndarray:
    """[x0, y0, x1, y1] boxes (inclusive) of the n_components largest 8-connected components, left to right."""
    ### BEGIN SOLUTION
    labels, n = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros((0, 4))
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")  # largest first, ties: lower label first
    keep = order if n_components is None else order[:n_components]
    boxes = []
    for k in keep:
        rows, cols = np.nonzero(labels == k + 1)
        boxes.append([cols.min(), rows.min(), cols.max(), rows.max()])
    return np.array(sorted(boxes), dtype=float)
    ### END SOLUTION


# %% tags=["check"]
ex.check_boxes(mask_to_boxes, n_trials=N_TRIALS, seed=SEED, strict=True);

# %% [markdown]
# ## Step 3 · Your boxes prompt SAM
#
# The toy pipeline makes a gScoreCAM map for the prompt; your functions turn it into boxes; LiteMedSAM
# segments inside them. For the chest X-ray the prompt names both lungs, so we keep two components (two
# boxes, one mask each, unioned). The package's `make_sam_prompts` with the same settings must give the same
# boxes; the Dice is against the phantom's ground truth (used only to score).

# %%
pipe = MedCLIPSAM.offline()
cases = [("xray", 2)] if SMOKE else [("xray", 2), ("breast", 1), ("brain", 1)]
panels, titles = [], []
for task, n in cases:
    s = PhantomDataset(task, 1, seed=SEED, size=256, split="test", normal_fraction=0.0)[0]
    sal = pipe.saliency(s.rgb, PROMPTS[task])[0]
    coarse = saliency_to_mask(sal)
    boxes = mask_to_boxes(coarse, n)
    package = make_sam_prompts(sal, postprocess="kmeans", box_mode="per_component", n_components=n).boxes
    assert np.allclose(boxes, package), f"{task}: your boxes {boxes} differ from the package's {package}"
    pipe.session.set_image(s.rgb)
    sam = pipe.session.predict(boxes=boxes)
    panels += [overlay(s.rgb, saliency=sal), overlay(s.rgb, coarse=coarse, boxes=boxes),
               overlay(s.rgb, sam.mask, outline=s.mask, boxes=boxes)]
    titles += [f"{task}: saliency for {PROMPTS[task]!r}", f"your coarse mask and {len(boxes)} box(es)",
               f"SAM in your boxes: Dice {dice(sam.mask, s.mask):.2f}"]
    print(f"{task}: boxes {boxes.astype(int).tolist()}")
sample_grid(panels, titles, ncols=3, cell_size=3.0, colorbar=True,
            legend=["coarse mask", "box prompt", "SAM mask", "ground truth (outline)"])
plt.show()

# %% [markdown]
# ## To think about (not graded)
#
# - Swap x and y in a box of the X-ray and prompt SAM with it: what does SAM segment?
# - Replace k-means by a fixed threshold of 0.5: on which maps does it fail?
# - Keep only one component for the X-ray: what happens to the second lung?
# - Where SAM misses (a Dice near 0), look at the coarse mask: is the largest salient component the
#   finding? What could choose better (points inside the box, a CRF that follows edges, a better map)?
