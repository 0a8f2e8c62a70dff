# %% [markdown]
# # 00 · Quick start: a text prompt in, a mask out
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medclipsam/medclipsam/blob/main/notebooks/00_quickstart.ipynb)
#
# MedCLIP-SAM segments whatever a text prompt names, with no segmentation training at all:
#
# 1. a CLIP model (BiomedCLIP, fine-tuned with DHN-NCE) tells how well the image matches the prompt;
# 2. **gScoreCAM** turns that into a heat map of *where* the prompt is;
# 3. the heat map becomes a coarse mask and then **box prompts**;
# 4. **SAM** draws the mask inside the boxes.
#
# This notebook runs it in one call. With real weights on disk it uses BiomedCLIP and SAM (the real
# world); otherwise the project's toy world: a small CLIP and a small SAM trained on phantom images,
# which run on any CPU in about a second per image. The other notebooks take each stage apart.

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
#
# `WORLD = "real"` tries BiomedCLIP + SAM ViT-B (downloaded once into the cache; falls back to the toy
# world with a message when they are not available, for example offline). `IMAGE` may be a path to
# your own image (PNG, JPEG, TIFF, DICOM, NIfTI); without it a phantom image of `TASK` is used.

# %% tags=["parameters"]
WORLD = "toy"          # "toy" or "real"
SMOKE = False          # CI: smaller image
DEVICE = "auto"
TASK = "breast"        # breast | brain | xray (sets the default prompt and the per-task preset)
PROMPT = None          # None: the task's prompt ("breast tumor", "brain tumor", "lungs")
IMAGE = None           # a path to your own image, or None for a phantom image
SEED = 3

# %%
# What this notebook runs on (versions, device, optional extras): quote it when you ask for help.
from medclipsam import show_environment

show_environment(world=WORLD, device=DEVICE)

# %%
import matplotlib.pyplot as plt

from medclipsam import MedCLIPSAM
from medclipsam.data.phantom import PROMPTS, PhantomDataset
from medclipsam.metrics import dice, nsd
from medclipsam.viz import result_figure

prompt = PROMPT or PROMPTS[TASK]
pipe = None
if WORLD == "real":
    try:
        pipe = MedCLIPSAM.from_pretrained(clip="biomedclip", sam="vit_b", device=DEVICE)
    except (OSError, RuntimeError) as err:  # offline, or weights not in the cache
        print(f"real weights not available ({type(err).__name__}: {str(err)[:200]}...)\n-> using the toy world")
if pipe is None:
    pipe = MedCLIPSAM.toy(device="cpu" if DEVICE == "auto" else DEVICE)
print(pipe)

# %%
gt = None
if IMAGE is not None:
    image = IMAGE
else:
    sample = PhantomDataset(TASK, SEED + 1, size=192 if SMOKE else 256, split="test", normal_fraction=0.0)[SEED]
    image, gt = sample.rgb, sample.mask
    print("caption of this phantom image:", sample.captions[0])

result = pipe.predict(image, prompt, task=TASK)
print(f"prompt {prompt!r}: SAM score {result.sam_score:.2f}, boxes {result.boxes.round(1).tolist()}, flags {result.flags or 'none'}")
print("seconds:", {k: round(v, 3) for k, v in result.timings.items()})
if gt is not None:
    print(f"Dice {dice(result.mask, gt):.3f}, NSD (2 px) {nsd(result.mask, gt):.3f} against the ground truth")

# %%
from medclipsam.data import load_picture  # the picture predict() used (the one image rule)

fig = result_figure(load_picture(image), result, gt=gt, cell_size=3.4)
plt.show()

# %% [markdown]
# Left to right: the image; the gScoreCAM heat map of the prompt; the coarse mask (k-means on the
# map, largest connected component) with the box prompt made from it; SAM's mask (red) with the
# ground-truth outline (green) when there is one.
#
# **Try next:** another `PROMPT` ("tumor in the right breast", "liver"), another `TASK` (`"xray"` gives
# two boxes, one per lung), or your own `IMAGE`. For whole folders use the command line:
# `medclipsam segment --images DIR --prompt "breast tumor" --out OUT`, then
# `medclipsam evaluate --pred OUT/masks --gt MASKS`.
