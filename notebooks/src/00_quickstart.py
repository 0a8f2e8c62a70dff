# %% [markdown]
# # 00 · Quick start: a text prompt in, a mask out
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medclipsam/medclipsam/blob/main/notebooks/00_quickstart.ipynb)
#
# MedCLIP-SAM segments whatever a text prompt names, with no segmentation training at all:
#
# 1. a CLIP model tells how well the image matches the prompt (the paper fine-tunes BiomedCLIP with its
#    DHN-NCE loss first, lesson 02; this notebook loads the CLIP named in `CLIP`: by default the base
#    BiomedCLIP in the real world, the toy CLIP offline);
# 2. **gScoreCAM** turns that into a heat map of *where* the prompt is;
# 3. the heat map becomes a coarse mask and then **box prompts**;
# 4. **SAM** draws the mask inside the boxes.
#
# This notebook runs it in one call. With real weights on disk it uses BiomedCLIP and SAM (the real
# world); otherwise the project's offline world: a small CLIP trained on phantom captions and the real
# LiteMedSAM (a medical SAM whose weights ship with the package), which run on any CPU (the seconds each stage took are printed below). The other notebooks take each
# stage apart.
#
# We show two phantom images: one where the pipeline works and one where it fails, and why. At the
# defaults the notebook runs in well under a minute on a 2-core CPU.

# %%
# Colab only: install the package into the runtime (JupyterLab and Binder users have it already),
# with the extras this notebook uses: crf, the dense CRF of the coarse masks (builds in about a minute).
# For the real world (BiomedCLIP and SAM) switch Colab to a GPU first: Runtime > Change runtime type >
# GPU; DEVICE = "auto" then uses it.
import subprocess
import sys

if "google.colab" in sys.modules:
    url = "git+https://github.com/medclipsam/medclipsam.git"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"medclipsam[crf] @ {url}"], check=True)

# %% [markdown]
# ## Parameters
#
# `WORLD = "real"` tries `CLIP` + `SAM` (BiomedCLIP and SAM ViT-B by default, downloaded once into the
# cache; `SAM_CHECKPOINT` your own file for a named SAM; falls back to the offline world with a message when
# they are not available, for example offline). `K` is gScoreCAM's number of channels (`None`: the
# world's default). `IMAGE` may be a path to your own image (PNG, JPEG, TIFF, DICOM, NIfTI); without it
# phantom images of `TASK` are used: `SEED = None` searches the first `N_SEARCH` of them for one where
# the pipeline works and one where it fails; a number picks that image.

# %% tags=["parameters"]
WORLD = "offline"      # "offline" or "real"
SMOKE = False          # CI: smaller images
DEVICE = "auto"
CLIP = "biomedclip"    # real world: the CLIP (a name, a fine-tuned checkpoint or a folder)
SAM = "vit_b"          # real world: vit_b | vit_l | vit_h | medsam | a checkpoint file
SAM_CHECKPOINT = None  # real world: your own weights for the named SAM
K = None               # gScoreCAM channels (None: the world's default)
TASK = "breast"        # breast | brain | xray (sets the default prompt and the per-task preset)
PROMPT = None          # None: the task's prompt ("breast tumor", "brain tumor", "lungs")
IMAGE = None           # a path to your own image, or None for phantom images
SEED = None            # None: search the first N_SEARCH phantom images; a number: that image
N_SEARCH = 8

# %%
# What this notebook runs on (versions, device, optional extras): quote it when you ask for help.
from medclipsam import show_environment

show_environment(world=WORLD, device=DEVICE)

# %%
import matplotlib.pyplot as plt

from medclipsam.coarse import coarse_mask
from medclipsam.data import load_picture  # the picture predict() used (the one image rule)
from medclipsam.data.phantom import PROMPTS, PhantomDataset
from medclipsam.metrics import dice, nsd
from medclipsam.teaching import diagnose_box, share, state
from medclipsam.viz import result_figure
from medclipsam.worlds import pipeline_for_world

prompt = PROMPT or PROMPTS[TASK]
# the real models if WORLD == "real" and they can be loaded, else the offline world (it says which, and why)
pipe = pipeline_for_world(WORLD, clip=CLIP, sam=SAM, sam_checkpoint=SAM_CHECKPOINT, k=K, device=DEVICE)
print(pipe)

# %%
def show(image, result, gt=None, name=""):
    """Print what the pipeline did with one image and draw its stages."""
    print(f"{name}prompt {prompt!r}: SAM score {result.sam_score:.2f}, boxes {result.boxes.round(1).tolist()}, "
          f"flags {result.flags or 'none'}")
    print("seconds per stage on this machine:", {k: round(v, 2) for k, v in result.timings.items()})
    if gt is not None:
        print(f"Dice {dice(result.mask, gt):.3f}, NSD (2 px) {nsd(result.mask, gt):.3f} against the ground truth")
    result_figure(load_picture(image), result, gt=gt, cell_size=3.0)
    plt.show()


if IMAGE is not None:
    result = pipe.predict(IMAGE, prompt, task=TASK)
    show(IMAGE, result)
else:
    data = PhantomDataset(TASK, N_SEARCH, size=192 if SMOKE else 256, split="test", normal_fraction=0.0)
    seeds = [SEED] if SEED is not None else range(min(N_SEARCH, 3 if SMOKE else N_SEARCH))
    tried = {i: (data[i], pipe.predict(data[i].rgb, prompt, task=TASK)) for i in seeds}
    scores = {i: dice(r.mask, smp.mask) for i, (smp, r) in tried.items()}
    print("Dice of each phantom image tried:", {f"image {i}": round(d, 3) for i, d in scores.items()})
    good = max(scores, key=scores.get)
    bad = min(scores, key=scores.get)
    # what made the coarse masks: the configured method, or k-means where the CRF extra is missing
    post = "kmeans" if any("crf_unavailable" in f for f in tried[good][1].flags) else pipe.config.postprocess
    print(f"coarse masks by: {post}" + (" (the CRF extra is not installed)" if post != pipe.config.postprocess else ""))
    state(share(sum(d >= 0.5 for d in scores.values()), len(scores), of=f"phantom images tried reach Dice >= 0.5 with {prompt!r}"),
          title=None)

# %% [markdown]
# ### Where it works
#
# The image with the highest Dice among those tried (its caption is printed: the phantom world writes
# one for every image).

# %%
if IMAGE is None:
    sample, result = tried[good]
    print(f"image {good}; caption: {sample.captions[0]}")
    show(sample.rgb, result, sample.mask, name=f"image {good}: ")

# %% [markdown]
# Left to right: the image; the gScoreCAM heat map of the prompt (colour bar: 0 low, 1 high); the
# coarse mask (the post-processing printed above, then the largest connected component) with the SAM
# prompts made from it; SAM's mask with the ground-truth outline when there is one (legend below the
# figure).
#
# ### Where it fails, and why
#
# The image with the lowest Dice among those tried (the cell says whether it is a failure). The box is drawn around the **largest** connected
# component of the coarse mask. The sentence below the figure is computed from that mask: whether the
# largest component is where the ground truth is, and whether it is also the map's most salient one.
# When it is not, ask yourself: what in the image could make a large, bright-enough region that is not
# the finding (look at the caption and at the picture: a shadow behind the lesion? a decoy?), and which
# rule would pick the right component instead (the most salient one? the one nearest the map's peak?).

# %%
if IMAGE is None and bad != good:
    sample, result = tried[bad]
    print(f"image {bad}; caption: {sample.captions[0]}")
    show(sample.rgb, result, sample.mask, name=f"image {bad}: ")
    print(f"Dice {scores[bad]:.3f}: " + ("a failure (below 0.5)" if scores[bad] < 0.5 else "not a failure: every image tried reached 0.5"))
    full = coarse_mask(result.saliency, post, image=load_picture(sample.rgb))
    state(diagnose_box(result.saliency, full, sample.mask), title=f"Image {bad}, computed from its coarse mask:")
elif IMAGE is None:
    print("only one image tried: set SEED = None to search several")

# %% [markdown]
# ## Self-check
#
# Answer each question in your own words before you unfold its answer.
#
# **1. In what order do the four stages run, and what does each one hand to the next?**
#
# <details><summary>Answer</summary>
#
# CLIP scores how well the whole image matches the prompt. gScoreCAM turns that single score into a
# heat map of *where* in the image it comes from. The heat map becomes a coarse mask, and a box is
# drawn around its largest connected component (two boxes for the two lungs of an X-ray). SAM gets
# the image and the boxes, not the text, and draws the mask inside them. So the prompt reaches SAM
# only through the boxes: a box in the wrong place cannot be repaired by SAM.
#
# </details>
#
# **2. No model in this pipeline is trained on masks of the task. Where does it learn what the
# prompt looks like, and where does the precise outline come from?**
#
# <details><summary>Answer</summary>
#
# *What* comes from CLIP, which learned to match images with text from image-caption pairs (the
# paper fine-tunes it with DHN-NCE, lesson 02, still without masks). *The outline* comes from SAM, a
# promptable segmenter that separates an object from its surroundings inside a box without knowing
# what the object is (LiteMedSAM, used offline, was trained that way on many kinds of medical
# images). Each part covers the other's blind spot: CLIP cannot draw a boundary, and the SAM used
# here cannot read text.
#
# </details>
#
# **3. The heat map can be brightest on the finding and the mask still land somewhere else. How?**
#
# <details><summary>Answer</summary>
#
# The box is drawn around the *largest* connected component of the coarse mask, not around the most
# salient one. If a larger region also passes the coarse-mask rule (an acoustic shadow behind the
# lesion, a decoy such as a cyst), the box goes around it and SAM faithfully segments the wrong
# structure. A different rule (the most salient component, or the one holding the map's peak) would
# choose differently. For the failure shown, the computed sentence under its figure says whether
# this is what happened.
#
# </details>
#
# **4. Why does the lesson report NSD beside Dice?**
#
# <details><summary>Answer</summary>
#
# Dice measures how much two masks overlap, 2|A ∩ B| / (|A| + |B|); it is dominated by the bulk of
# the region. NSD (normalised surface Dice) is the share of both outlines that lies within a
# tolerance (here 2 pixels) of the other outline: it measures how well the boundary is drawn. A mask
# in the right place with a ragged or shifted border can keep a fair Dice and still have a poor NSD.
#
# </details>

# %% [markdown]
#
# **Try next:** another `PROMPT` ("tumor in the right breast", "liver"), another `TASK` (`"xray"` gives
# two boxes, one per lung), or your own `IMAGE`. For whole folders use the command line:
# `medclipsam segment --images DIR --prompt "breast tumor" --out OUT`, then
# `medclipsam evaluate --pred OUT/masks --gt MASKS`.
