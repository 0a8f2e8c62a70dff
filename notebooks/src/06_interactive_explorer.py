# %% [markdown]
# # 06 · The prompt explorer: every knob of MedCLIP-SAM, live
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medclipsam/medclipsam/blob/main/notebooks/06_interactive_explorer.ipynb)
#
# Notebooks 03 to 05 took the method apart stage by stage. Here it is put back together as an
# interactive application, so you can *feel* what each choice does:
#
# * **image**: a held-out phantom image of each task (or your own, with *upload image*);
# * **prompt**: type a text and press Enter (or *segment*); the saliency map follows it. An empty
#   prompt is refused: its map would be what the image tower finds salient, whatever you meant;
# * **saliency**: gScoreCAM (the paper's), GradCAM, M2IB (v2), or a *control* map that ignores the
#   prompt (random, uniform): with a control, whatever SAM finds is not the prompt's doing;
# * **k**: how many channels gScoreCAM keeps (from 1 to all of them, which is plain ScoreCAM);
# * **coarse mask**: how the map becomes a region (dense CRF, k-means, a fixed threshold, Otsu) and
#   the **threshold** of the fixed rule (its slider is shown only with that rule, the one that reads it);
# * **SAM prompts**: a box, points, or both, made from that region;
# * **SAM model**: the SAM that draws the mask (add your own, e.g. MedSAM, in the set-up cell; the
#   real world offers MedSAM, SAM ViT-H and SAM 2, and lesson 07 compares them on a data set);
# * **click adds**: click on the first panel to add a positive or negative point, or drag a box;
#   this re-runs only SAM's decoder on the stored image embedding, so it answers at once.
#
# The read-out under the panels gives the Dice against the ground truth, SAM's score and the mask's
# area, and says so in red when SAM returned an empty mask (it happens: try the *points* prompts on
# the first breast image).
#
# The *compare prompts* tab runs several prompts on one image side by side, each with its Dice and
# its **prompt sensitivity**: how far its saliency map is from the maps of control prompts (empty,
# nonsense, "normal tissue", another organ). A map that barely changes when the prompt is replaced
# by nonsense shows what the image tower finds salient, not where the prompt is.
#
# Only what a change affects is recomputed: moving the threshold does not re-run the saliency, and
# a click does not re-run SAM's image encoder. The status line counts the stages that really ran.

# %%
# Colab only: install the package into the runtime (JupyterLab and Binder users have it already),
# with the extras this notebook uses: crf (the dense CRF; builds in about a minute) and widgets
# (ipywidgets 8 and ipyevents, for the explorer and its clicks).
import subprocess
import sys

if "google.colab" in sys.modules:
    url = "git+https://github.com/medclipsam/medclipsam.git"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"medclipsam[crf,widgets] @ {url}"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()  # Colab: let third-party widgets (ipyevents) render

# %% [markdown]
# ## Parameters
#
# `WORLD = "real"` builds the explorer over `CLIP` + `SAM` (BiomedCLIP and SAM ViT-B by default,
# downloaded once into the cache; `SAM_CHECKPOINT` your own file for a named SAM) and the images (and
# masks, if any) of `DATA_DIR` (a folder with `images/` and optionally `masks/`, as `medclipsam
# prepare` writes), or `PER_TASK` phantom images per task without one; MedSAM, SAM ViT-H and SAM 2.1
# tiny are offered beside it, loaded when picked. Without the weights it falls back to the offline world
# with a message. `K` is gScoreCAM's number of channels to start with (`None`: the world's default).
# `DRIVE = True` also runs the section that drives the explorer from code (what CI does: there is no
# one to click there).

# %% tags=["parameters"]
WORLD = "offline"      # "offline" or "real"
SMOKE = False          # CI: fewer images and settings
DEVICE = "auto"
CLIP = "biomedclip"    # real world: the CLIP (a name, a fine-tuned checkpoint or a folder)
SAM = "vit_b"          # real world: vit_b | vit_l | vit_h | medsam | a checkpoint file
SAM_CHECKPOINT = None  # real world: your own weights for the named SAM
K = None               # gScoreCAM channels to start with (None: the world's default)
DATA_DIR = None        # real world: a folder with images/ (and masks/); None: phantom images
PROMPT = None          # real world: the prompt to start with
PER_TASK = 3           # phantom images per task (the offline world, or the real one without DATA_DIR)
DRIVE = True           # run the programmatic walk-through below
COMPARE = ["breast tumor", "benign breast lesion", "brain tumor", "normal tissue"]

# %%
# What this notebook runs on (versions, device, optional extras): quote it when you ask for help.
from medclipsam import show_environment

show_environment(world=WORLD, device=DEVICE)

# %%
import matplotlib.pyplot as plt

from medclipsam.widgets import PromptExplorer

# the real models if WORLD == "real" and they can be loaded, else the offline world (it says which, and why)
explorer = PromptExplorer.for_world(WORLD, data_dir=DATA_DIR, prompt=PROMPT, clip=CLIP, sam=SAM,
                                    sam_checkpoint=SAM_CHECKPOINT, k=K, device=DEVICE,
                                    per_task=1 if SMOKE else PER_TASK, compare_prompts=COMPARE)
explorer


# %% [markdown]
# ### Things to try
#
# 1. With *breast tumor* on a breast image, switch the saliency to **random map (control)**. The
#    coarse mask and SAM's mask now land anywhere; the Dice collapses. That gap is what the prompt
#    and the CLIP model contribute.
# 2. Slide **k** from 1 to its maximum (all channels: plain ScoreCAM). Where does the map sit at
#    few channels, at the offline world's default, at all of them? Does the Dice follow?
# 3. Choose **threshold** as the coarse-mask rule and move its slider: the region grows and shrinks
#    (status line: the saliency count does not move).
# 4. On an **x-ray**, the task preset asks for two regions, one box per lung; set the preset to
#    *none*: the pipeline now keeps one component and draws one box. Does it cover one lung or
#    reach across both (the read-out prints the boxes)? What happens to the Dice?
# 5. Put a **negative point** (click adds: - point) on a part of the mask that is wrong, or drag a
#    box yourself: that is SAM used interactively, the way it was designed.
# 6. In **compare prompts**, press *compare*: "normal tissue" is one of the controls, so its
#    sensitivity should be the lowest in the table; a prompt naming the finding should be far from
#    every control. Is it, in the table you get?
# 7. Switch the saliency to **M2IB** and compare again. On the toy CLIP its maps hardly change with
#    the prompt (compare its sensitivities with gScoreCAM's), yet SAM may still find the lesion: the
#    map then follows what the image tower finds salient. A good Dice is not proof that the prompt did
#    the work.

# %% [markdown]
# ## Driving the explorer from code
#
# Everything the controls do is an ordinary method or a widget value, so a script (or a test, or
# this notebook under papermill) can drive it. The counters show the caching at work.

# %%
def ran(before):
    return {k: explorer.counts[k] - before[k] for k in before if explorer.counts[k] != before[k]}

if DRIVE:
    breast = next((n for n in explorer.images if n.startswith("breast ")), None)  # phantom images
    if breast:
        explorer.select(breast)
    print("now showing:", {k: explorer.state[k] for k in ("image", "prompt", "method", "k", "dice")})

    before = dict(explorer.counts)
    explorer.postprocess.value = "threshold"
    areas = {}
    for t in ([0.2, 0.5, 0.8] if SMOKE else [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]):
        explorer.threshold.value = t
        areas[t] = int(explorer.sam_prompts.mask.sum())
    print("coarse-mask area by threshold:", areas)
    print("stages that ran for the whole sweep:", ran(before))
    explorer.postprocess.value = "crf"

# %% [markdown]
# The sweep re-ran the prompt-making and SAM's decoder once per threshold, and the saliency and the
# image encoder not at all. Next, a click: a negative point in the middle of the mask.

# %%
import numpy as np

if DRIVE:
    before = dict(explorer.counts)
    ys, xs = np.nonzero(explorer.mask)
    if len(ys):
        area = int(explorer.mask.sum())
        explorer.add_point(float(np.median(xs)), float(np.median(ys)), positive=False)
        print(f"mask area {area} -> {int(explorer.mask.sum())} after a negative point; ran: {ran(before)}")
        explorer.clear_clicks()
    fig = explorer.figure(cell_size=3.2)
    plt.show()

# %% [markdown]
# And the comparison of prompts (the same as pressing *compare* in the second tab):

# %%
if DRIVE:
    rows = explorer.compare(COMPARE[:2] + COMPARE[-1:] if SMOKE else COMPARE)
    print(f"{'prompt':<24s} {'Dice':>6s} {'sensitivity':>12s}")
    for r in rows:
        d = "-" if r["dice"] is None else f"{r['dice']:.3f}"
        s = "-" if r["sensitivity"] is None else f"{r['sensitivity']:.2f}"
        print(f"{r['prompt']:<24s} {d:>6s} {s:>12s}")

# %% [markdown]
# **Reading the table.** A high Dice with a high sensitivity is the method working as intended. A
# high Dice with a *low* sensitivity would be luck: the map would point there whatever the prompt
# said. A prompt naming another organ ("brain tumor" on a breast image) should get a different map
# and a worse mask: where the table shows that, the saliency follows the text; where the wrong organ
# scores as well as the right one, the map follows the image, not the words.

# %% [markdown]
# ## Self-check
#
# Answer each question in your own words before you unfold its answer.
#
# **1. Why does moving the threshold slider not re-run the saliency, and why does a click not re-run
# SAM's image encoder?**
#
# <details><summary>Answer</summary>
#
# Each stage depends only on what comes before it: the saliency on the image, the prompt, the method
# and k; the coarse mask on the saliency and the post-processing; the SAM prompts on the coarse mask
# and the prompt mode; SAM's image embedding on the image alone; its mask decoder on the embedding
# and the prompts. The explorer keeps each stage's result and recomputes only the stages after the
# one that changed. A threshold changes the coarse mask and what follows it; a click changes only
# the prompts, so only SAM's light decoder runs. The status line counts the stages that really ran.
#
# </details>
#
# **2. You switch the saliency to the random or uniform map (a control). What does the change in
# Dice tell you?**
#
# <details><summary>Answer</summary>
#
# A control map ignores the prompt, so whatever SAM finds with it is not the prompt's doing. The gap
# between the Dice with the prompt's saliency and the Dice with the control is what the prompt and
# the CLIP model contribute on that image. A small gap means the prompt adds little there: either
# its map is no better than chance on that image, or the coarse-mask rule and SAM find the target
# from the image alone (for example, because it is the most contrasted object in the picture).
#
# </details>
#
# **3. What is prompt sensitivity, and why is a high Dice with a low sensitivity not evidence that
# the method works?**
#
# <details><summary>Answer</summary>
#
# It is how far the prompt's saliency map is from the maps of control prompts (empty, nonsense,
# "normal tissue", another organ), measured as 1 - Pearson correlation; the closest control counts.
# A low sensitivity means the map is nearly the same whatever the text says: it shows what the image
# tower finds salient. A good mask from such a map is luck or the image's own contrast; it would not
# follow a different prompt.
#
# </details>
#
# **4. Sliding k to its maximum turns gScoreCAM into which method, and what does k trade?**
#
# <details><summary>Answer</summary>
#
# Into ScoreCAM: every channel of the layer is scored. k trades time for coverage: each scored
# channel costs one forward pass of the image tower, and the map is built only from the channels
# scored. A small k is fast but relies on the gradient having picked the useful channels; a large k
# relies less on that pick and costs more. Lesson 03's random-k control tests whether the pick is
# any good on a given model.
#
# </details>

# %% [markdown]
# To explore your own data, run this notebook with `WORLD = "real"` and `DATA_DIR` pointing at a
# prepared folder, or build a `PromptExplorer(pipeline, {"name": ExplorerImage(image, mask)})`
# yourself.
