# %% [markdown]
# # 07 · Which SAM should MedCLIP-SAM feed, and is the saliency chain still needed?
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medclipsam/medclipsam/blob/main/notebooks/07_sam_backends.ipynb)
#
# MedCLIP-SAM turns a text prompt into a saliency map, the map into a box, and the box into a mask
# with SAM (2023). Since then the field moved:
#
# * **MedSAM** (2024) is SAM ViT-B fine-tuned on 1.5 million medical image-mask pairs;
# * **SAM 2** (2024) segments from boxes and points too, with a faster hierarchical image encoder
#   (Hiera) in four sizes, tiny to large;
# * **SAM 3** (2025, *Segment Anything with Concepts*) segments from a **short text phrase**
#   directly: no CLIP, no saliency, no box.
#
# So two questions come before any other: *which SAM should the boxes go to*, and *does SAM 3 from
# the text alone make the whole saliency-to-box chain unnecessary?* Published comparisons use
# different images, prompts and metrics, so this lesson measures them on the **same images with the
# same metrics**:
#
# 1. every MedCLIP-SAM row uses the **same** saliency map and the **same** boxes for an image (the
#    map is computed once and shared), so the rows differ only in the segmenter;
# 2. the SAM 3 row gets the same text prompt and nothing else;
# 3. each row reports Dice, IoU and NSD with 95 % bootstrap intervals, and seconds per image.
#
# **The two worlds.** The comparison is a real-world experiment: it needs BiomedCLIP, the SAM
# checkpoints (SAM 3's are gated: request access at <https://huggingface.co/facebook/sam3> first) and
# a data set, ideally on a GPU. The offline world has a toy CLIP and LiteMedSAM but no trained SAM 2 or SAM 3, so
# with `WORLD = "offline"` this notebook runs the **same code path** on the real SAM 2 and SAM 3
# architectures built small with **random weights**: their masks mean nothing (expect a Dice near
# chance), but every step, table and figure below is the one the real run produces.

# %%
# Colab only: install the package into the runtime (JupyterLab and Binder users have it already),
# with the extra this notebook uses: crf, the dense CRF of the pipeline's coarse masks (builds in about
# a minute). For the real world, switch Colab to a GPU first: Runtime > Change runtime type > GPU.
import subprocess
import sys

if "google.colab" in sys.modules:
    url = "git+https://github.com/medclipsam/medclipsam.git"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"medclipsam[crf] @ {url}"], check=True)

# %% [markdown]
# ## Parameters
#
# For the real world set `DATA_DIR` to a prepared data set (a folder with `images/`, `masks/` and
# `splits.json`, as `medclipsam prepare busi ...` writes), `PROMPT` to the text, and list the
# segmenters in `BACKENDS`: `vit_b` (SAM, the paper's v1), `vit_h` (v2), `medsam`,
# `sam2-hiera-tiny` / `-small` / `-base-plus` / `-large`, and `sam3-text` (SAM 3 from the text alone).

# %% tags=["parameters"]
WORLD = "offline"      # "offline" (toy CLIP + LiteMedSAM, random-weight SAM 2 / SAM 3) or "real"
SMOKE = False          # CI: two images
DEVICE = "auto"
DATA_DIR = None        # real world: a folder with images/, masks/ (and splits.json)
PROMPT = None          # real world: e.g. "breast tumor"
TASK = None            # "breast", "brain" or "xray": the task's preset (xray: one box per lung)
SPLIT = "test"         # real world: the split scored (None: every image)
LIMIT = 50             # at most this many images
BACKENDS = ["vit_b", "medsam", "sam2-hiera-tiny", "sam3-text"]
CLIP = "biomedclip"
N_TOY = 8              # offline world: phantom images
OUT = "compare-out"

# %%
# What this notebook runs on (versions, device, optional extras): quote it when you ask for help.
from medclipsam import show_environment

show_environment(world=WORLD, device=DEVICE)

# %%
import matplotlib.pyplot as plt

from medclipsam.compare import compare_backends, comparison_figure, example_panels, format_table
from medclipsam.teaching import compare, state
from medclipsam.viz import sample_grid

device = "cpu" if WORLD == "offline" and DEVICE == "auto" else DEVICE
if WORLD == "real":
    if not (DATA_DIR and PROMPT):
        raise ValueError("the real world needs DATA_DIR (images/, masks/) and PROMPT")
    data, prompt, split, task = DATA_DIR, PROMPT, SPLIT, TASK
    backends, clip, config = BACKENDS, CLIP, None
else:
    from medclipsam.config import OFFLINE_DEFAULTS, PipelineConfig, default_k
    from medclipsam.data.phantom import PROMPTS, write_phantom_folder
    from medclipsam.models import build_sam2, build_sam3, load_clip

    n = 2 if SMOKE else N_TOY
    data = f"{OUT}/data/breast-{n}"  # phantom images beside the outputs (a rerun reuses them)
    write_phantom_folder(data, "breast", n, seed=0, size=128)
    prompt, split, task = PROMPTS["breast"], None, "breast"
    clip = load_clip("toy", device=device)
    # the offline pipeline's settings (see MedCLIPSAM.offline); the SAM 2 / SAM 3 rows: real
    # architectures, small, random weights
    config = PipelineConfig(**OFFLINE_DEFAULTS, k=default_k("offline"))
    backends = {
        "LiteMedSAM": "litemedsam",
        "SAM 2 (random weights)": lambda: build_sam2("test", device=device),
        "SAM 3 text only (random weights)": lambda: build_sam3("test", device=device),
    }
print("data:", data, "| prompt:", repr(prompt), "| backends:", list(backends))

# %% [markdown]
# ## 1 · One table, the same images for every segmenter
#
# `compare_backends` loads one segmenter at a time (and releases it before the next, so large models
# fit), runs it on every image, and scores the masks. The first MedCLIP-SAM backend computes the
# saliency maps; the others reuse them. It also writes each backend's masks to `OUT/<backend>/masks`
# and the tables to `OUT/comparison.csv` and `OUT/per_image.csv`.

# %%
rows = compare_backends(data, prompt, backends, clip=clip, config=config, out_dir=OUT, split=split,
                        limit=LIMIT, task=task, device=device, n_boot=200 if SMOKE else 1000,
                        progress=False)
print(format_table(rows))

# %% [markdown]
# Columns: **Dice** and **NSD** (the share of the boundary within 2 pixels of the true one) with
# 95 % bootstrap intervals over images, **IoU**, and the seconds one image costs: the whole method
# (for MedCLIP-SAM: the shared saliency map plus the segmenter) and the segmenter alone.

# %%
fig = comparison_figure(rows, title=f"{prompt!r} on {rows[0]['images']} images")
plt.show()

# %% [markdown]
# ## 2 · What the numbers say
#
# The sentences below are computed from the table, not written in advance.

# %%
best = max(rows, key=lambda r: r["dice"])
fastest = min(rows, key=lambda r: r["s_per_image"])
print(f"Highest mean Dice: {best['backend']} ({best['method']}), {best['dice']:.3f} "
      f"[{best['dice_ci'][0]:.3f}, {best['dice_ci'][1]:.3f}].")
# every backend segmented the same images: the paired difference of the best and the runner-up says
# whether these images can tell them apart
state(compare({r["backend"]: r["dice_per_image"] for r in rows}, what="Dice"), title=None)
print(f"Fastest per image: {fastest['backend']}, {fastest['s_per_image']:.2f} s "
      f"(the slowest takes {max(r['s_per_image'] for r in rows) / fastest['s_per_image']:.0f}x as long).")
for r in rows:
    if r["method"].startswith("SAM 3"):
        print(f"{r['backend']}: found nothing above its score threshold on {r['flagged']} of "
              f"{r['images']} images (an empty mask: Dice 0 there).")
if WORLD == "offline":
    print("Offline world: the SAM 2 and SAM 3 rows are small random-weight stand-ins of their "
          "architectures, so their Dice is chance level and their seconds say nothing about the real "
          "models (the README's speed table has measured ones); only the LiteMedSAM row measures a "
          "trained model.")

# %% [markdown]
# ## 3 · One image, every mask
#
# The green outline is the ground truth; red is each segmenter's mask.

# %%
from medclipsam.data.datasets import FolderDataset

stem = FolderDataset(data, split=split).stems[0]
panels, titles = example_panels(data, OUT, rows, stem, split=split)
sample_grid(panels, titles, ncols=len(panels), cell_size=2.8,
            legend=[("each segmenter's mask", "SAM mask"), "ground truth (outline)"])
plt.show()

# %% [markdown]
# ## 4 · The same from the command line
#
# ```bash
# medclipsam compare --data data/busi --split test --prompt "breast tumor" \
#     --backends vit_b,medsam,sam2-hiera-tiny,sam3-text --out compare-busi
# medclipsam evaluate --pred compare-busi/sam3-text/masks --gt data/busi/masks   # any row again
# medclipsam segment --images data/busi/images --prompt "breast tumor" --sam sam3-text --out sam3-busi
# ```
#
# SAM 2's weights come from Meta's `facebook/sam2.1-hiera-*` repositories on the Hugging Face hub
# (downloaded once, checked against the hashes the hub publishes); SAM 3's from `facebook/sam3`
# once your access request is granted (`hf auth login` on the machine, or `hf download facebook/sam3
# --local-dir DIR` elsewhere and `sam3-text:DIR` here). MedSAM2 is published in SAM 2's original
# checkpoint format, which the package does not convert: a folder converted to the transformers
# format loads by its path.
#
# In the prompt explorer (lesson 06) SAM 2 joins the SAM picker, and SAM 3's mask from the text
# alone appears beside each prompt in the *compare prompts* tab:
#
# ```python
# from medclipsam.models import load_sam
# from medclipsam.text_baselines import Sam3TextBaseline
# from medclipsam.widgets import PromptExplorer
#
# explorer = PromptExplorer.from_folder(
#     pipe, DATA_DIR, sam_models={"SAM 2.1 tiny": lambda: load_sam("sam2-hiera-tiny")},
#     text_baseline=Sam3TextBaseline.from_pretrained)   # loaded when first needed
# ```

# %% [markdown]
# ## Self-check
#
# Answer each question in your own words before you unfold its answer.
#
# **1. Why do all MedCLIP-SAM rows share one saliency map and one set of boxes per image?**
#
# <details><summary>Answer</summary>
#
# So that the rows differ only in the segmenter: a difference between two rows can then be put down
# to the segmenter and not to a different map or box. It also means the map is computed once, not
# once per backend.
#
# </details>
#
# **2. What does SAM 3 take as input, and what question does its row answer?**
#
# <details><summary>Answer</summary>
#
# The image and a short text phrase, nothing else: no CLIP, no saliency map, no box. It returns the
# instances of the phrase it finds above its score threshold, and an empty mask (Dice 0) when it
# finds none. Its row asks whether a segmenter that reads the text itself makes MedCLIP-SAM's
# saliency-to-box chain unnecessary, on the same images with the same metrics.
#
# </details>
#
# **3. In the offline world the SAM 2 and SAM 3 rows have random weights. What is that run still
# good for?**
#
# <details><summary>Answer</summary>
#
# It runs the same code path as the real comparison: loading one backend at a time, sharing the
# maps, scoring, writing the tables and masks, drawing the figures. What it cannot do is compare
# models: random-weight masks carry no knowledge, so those rows' Dice is chance level and their
# seconds say nothing about the real models. Only the LiteMedSAM row measures a trained model.
#
# </details>
#
# **4. The table gives two times per image: the whole method and the segmenter alone. Which one do
# you read to compare SAM 3 with a MedCLIP-SAM row, and which to compare two segmenters fed the same
# boxes?**
#
# <details><summary>Answer</summary>
#
# For a MedCLIP-SAM row the whole method is the saliency map plus the segmenter: the map is computed
# once and shared, but each row is charged for it, since each would need it on its own. SAM 3 has no
# saliency step, so its two times are the same. Comparing SAM 3 with MedCLIP-SAM therefore needs the
# whole-method time; comparing segmenters that get the same boxes needs the segmenter time, where
# the shared map's cost, the same for each of them, is left out.
#
# </details>

# %% [markdown]
# ## Things to try
#
# 1. Run the real comparison on BUSI with `PROMPT = "breast tumor"`, then again with SAM 3's usual
#    kind of phrase, `"lesion"`: SAM 3 was trained on short noun phrases, MedCLIP-SAM's CLIP on
#    captions. Does the ranking change with the wording?
# 2. Add `vit_h` (MedCLIP-SAMv2's SAM) and `sam2-hiera-large`: does a larger segmenter help when
#    the box is the same?
# 3. On chest X-rays set `TASK = "xray"`: MedCLIP-SAM then makes one box per lung, while SAM 3
#    returns every instance of "lung" it finds. Compare the two-lung cases in `OUT/per_image.csv`.
# 4. Sort `OUT/per_image.csv` by Dice per backend: are the failures the same images for every
#    segmenter (a saliency failure: a bad box), or different ones (a segmenter failure)?
