# %% [markdown]
# # 05 · Weak supervision: from zero-shot masks to a trained network
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medclipsam/medclipsam/blob/main/notebooks/05_weak_supervision.ipynb)
#
# Stage 4 of MedCLIP-SAM. The zero-shot masks of the previous notebooks need no labels, but each one
# carries its own mistakes: a box on the wrong structure here, a mask that leaks into a shadow there.
# Stage 4 uses them as **pseudo-labels**: an ordinary segmentation network (a Residual UNet, trained
# with Dice + cross-entropy) learns from the zero-shot masks of a training split and then segments the
# test split on its own.
#
# Can a network trained on imperfect labels beat those labels? It depends on *what* the errors are.
# Errors that differ from image to image (a wrong box here, a leak there) can average out: a network of
# limited capacity, trained on many images, fits what the labels share. Errors that repeat (the same
# kind of dark shadow or decoy taken for the lesion on many images) are something the labels share
# too, and the network can learn them. Section 2 measures which kind ours are. (The same network
# trained on the real labels is the **fully supervised** upper bound.)
#
# MedCLIP-SAMv2 adds an **uncertainty** score: an ensemble of checkpoints predicts each training
# image; where the members disagree, the pseudo-label is doubtful, and dropping the most doubtful ones
# can help. Ground truth is used here only to score, never to train the weak network.

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
WORLD = "offline"      # "offline" (phantom data set, toy CLIP + LiteMedSAM) or "real" (DATA_DIR prepared by medclipsam prepare)
SMOKE = False          # CI: tiny data set and network, few epochs
DEVICE = "auto"
TASK = "breast"        # breast | brain | xray
DATA_DIR = None        # real world: a folder with images/, masks/ and splits.json
CLIP = "biomedclip"    # real world: the CLIP (a name, a fine-tuned checkpoint or a folder)
SAM = "vit_b"          # real world: vit_b | vit_l | vit_h | medsam | a checkpoint file
SAM_CHECKPOINT = None  # real world: your own weights for the named SAM
K = None               # gScoreCAM channels (None: the world's default)
FULL = False           # the paper-sized run: N_IMAGES_FULL images, EPOCHS_FULL epochs at SIZE_FULL
N_IMAGES = 60          # offline world: phantom images (70 % train, 10 % val, 20 % test)
EPOCHS = 30            # the validation Dice of small targets stays flat for tens of epochs, then rises
SIZE = 64              # training resolution
N_IMAGES_FULL = 150
EPOCHS_FULL = 100
SIZE_FULL = 96
DROP_UNCERTAIN = 0.2   # also retrain without this share of the least certain pseudo-labels
OUT_DIR = "runs/05_weak"
SEED = 0

# %%
# What this notebook runs on (versions, device, optional extras): quote it when you ask for help.
from medclipsam import show_environment

show_environment(world=WORLD, device=DEVICE)

# %%
import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from medclipsam import MedCLIPSAM
from medclipsam.config import WeakConfig
from medclipsam.data.datasets import load_split
from medclipsam.data.io import read_image, read_mask
from medclipsam.data.phantom import write_phantom_folder
from medclipsam.metrics import dice
from medclipsam.reproduce import reproduce
from medclipsam.teaching import compare, share, state
from medclipsam.viz import overlay, sample_grid

if FULL:
    N_IMAGES, EPOCHS, SIZE = N_IMAGES_FULL, EPOCHS_FULL, SIZE_FULL
    OUT_DIR = OUT_DIR + "_full"
config = WeakConfig(epochs=EPOCHS, size=SIZE, device=DEVICE, seed=SEED)
if SMOKE:
    N_IMAGES = 16
    config = WeakConfig(epochs=3, size=64, batch_size=4, channels=(8, 16, 32), strides=(2, 2), device=DEVICE, seed=SEED)
    OUT_DIR = OUT_DIR + "_smoke"
if WORLD == "offline":
    data = write_phantom_folder(Path(OUT_DIR) / "data" / TASK, TASK, N_IMAGES, seed=SEED, size=256)
    pipe = MedCLIPSAM.offline(**({} if K is None else {"k": K}))
else:
    data = Path(DATA_DIR)
    pipe = MedCLIPSAM.from_pretrained(CLIP, SAM, sam_checkpoint=SAM_CHECKPOINT, device=DEVICE,
                                      **({} if K is None else {"k": K}))
splits = load_split(data / "splits.json")
print({k: len(v) for k, v in splits.items()}, "images per split in", data)

# %% [markdown]
# ## 1 · Run the whole stage
#
# At the defaults the whole lesson takes about two minutes on a 2-core CPU (three small networks; the
# executed copy in docs/lessons records its time); `FULL = True` (150 images, 100 epochs at 96 px)
# several times as long.
#
# `reproduce` does every step and resumes any of them: zero-shot pseudo-labels for the train and
# validation images (and zero-shot masks for the test images), the weak network on the pseudo-labels
# with early stopping on the *validation pseudo-labels*, the uncertainty-filtered retraining, the fully
# supervised network on the real labels, and the test-split table. The same is
# `medclipsam reproduce --task breast --data DIR --out OUT` on the command line.

# %%
out = Path(OUT_DIR) / TASK
table = reproduce(data, out, task=TASK, pipe=pipe, config=config, drop_uncertain=DROP_UNCERTAIN,
                  progress=not SMOKE)
print((out / "table.md").read_text())
# every setting segmented the same test images: compare them by the paired difference
per_image = {r["setting"]: r["dice_per_image"] for r in table}
for name, v in per_image.items():
    print(f"{name}: mean test Dice {np.mean(v):.3f} over {len(v)} images")
state(compare(per_image, what="test Dice"),
      compare({k: per_image[k] for k in ("weakly supervised", "zero-shot")}, what="test Dice",
              context="The weak network against its own teacher"))

# %% [markdown]
# ## 2 · The pseudo-labels
#
# Zero-shot masks of training images, next to the real labels (which the weak network never sees).
# The manifest records SAM's predicted IoU and any fall-back flag per image.

# %%
manifest = {r["id"]: r for r in csv.DictReader(open(out / "pseudo" / "results.csv"))}
stems = splits["train"][:6]
panels, titles = [], []
for s in stems:
    img = read_image(next((data / "images").glob(s + ".*")), mode="grey")
    pl = read_mask(out / "pseudo" / "masks" / f"{s}.png")
    gt = read_mask(next((data / "masks").glob(s + "*")))
    panels.append(overlay(img, pl, outline=gt))
    titles.append(f"{s}: Dice {dice(pl, gt):.2f}, SAM {float(manifest[s]['sam_score']):.2f}")
sample_grid(panels, titles, ncols=3, cell_size=3.0, suptitle="training images: pseudo-labels and real labels",
            legend=[("pseudo-label (SAM mask)", "SAM mask"), ("real label (ground truth)", "ground truth (outline)")])
plt.show()

# %% [markdown]
# ### What the errors are
#
# For every training image: the pseudo-label's Dice against the real label, and, where it misses
# (Dice < 0.5), whether it sits on a region at least as dark as the real lesion (where the phantom
# world's cysts and acoustic shadows are). If most misses are of that one kind, the errors are
# systematic, and a network trained on them may learn to repeat them: compare the weak row of the
# table with the zero-shot row.

# %%
rows = []
for s in splits["train"]:
    img = read_image(next((data / "images").glob(s + ".*")), mode="grey").astype(float)
    pl = read_mask(out / "pseudo" / "masks" / f"{s}.png")
    gt = read_mask(next((data / "masks").glob(s + "*")))
    if not gt.any():
        continue
    dark = pl.any() and img[pl & ~gt].mean() <= img[gt].mean() if (pl & ~gt).any() else False
    rows.append((s, dice(pl, gt), bool(dark), not pl.any()))
misses = [r for r in rows if r[1] < 0.5]
state(share(len(misses), len(rows), of="training pseudo-labels (images with a finding) miss, Dice < 0.5"),
      share(sum(r[3] for r in misses), len(misses), of="of those misses are empty masks (nothing segmented)"),
      share(sum(r[2] for r in misses), len(misses),
            of="of those misses lie on a region at least as dark as the real lesion (a shadow or cyst?)"),
      title="Computed from the training pseudo-labels:")
print("misses:", [f"{s} ({d:.2f}{', empty' if e else ''})" for s, d, _, e in misses[:12]])

# %% [markdown]
# ## 3 · Training curves
#
# Loss on the pseudo-labels and Dice against the validation pseudo-labels, per epoch. The model kept
# is the epoch with the best validation Dice.

# %%
fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
for name, trained_on in (("weak", "pseudo-labels"), ("full", "real labels")):
    hist = json.loads((out / name / "log.json").read_text())["epochs"]
    ax[0].plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], label=f"{name} ({trained_on})")
    ax[1].plot([h["epoch"] for h in hist], [h["val_dice"] for h in hist], label=f"{name} ({trained_on})")
ax[0].set(xlabel="epoch", ylabel="loss (Dice + CE)", title="training loss")
ax[1].set(xlabel="epoch", ylabel="Dice", title="validation Dice, each against its own kind of labels")
for a in ax:
    a.xaxis.set_major_locator(plt.MaxNLocator(8, integer=True))
    a.grid(alpha=0.3)
    a.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4 · Uncertainty: which pseudo-labels are doubtful?
#
# Each training image's uncertainty is the mean entropy of the averaged prediction of the weak run's
# epoch checkpoints. If it is a useful signal, the most uncertain pseudo-labels should be the worst ones:
# here we check that against the real labels (for the lesson only).

# %%
if (out / "uncertainty.csv").exists():
    unc = list(csv.DictReader(open(out / "uncertainty.csv")))
    u = np.array([float(r["uncertainty"]) for r in unc])
    d = np.array([dice(read_mask(out / "pseudo" / "masks" / f"{r['id']}.png"),
                       read_mask(next((data / "masks").glob(r["id"] + "*")))) for r in unc])
    kept = np.array([r["kept"] == "1" for r in unc])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(u[kept], d[kept], label="kept for retraining")
    ax.scatter(u[~kept], d[~kept], label="dropped (most uncertain)", marker="x")
    ax.set(xlabel="ensemble uncertainty (mean entropy)", ylabel="pseudo-label Dice vs real label",
           title="are the most uncertain pseudo-labels the worst?")
    ax.xaxis.set_major_locator(plt.MaxNLocator(5))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)  # off the points
    plt.tight_layout()
    plt.show()
    if len(u) > 2:
        print(f"Spearman correlation (uncertainty vs pseudo-label Dice): "
              f"{np.corrcoef(np.argsort(np.argsort(u)), np.argsort(np.argsort(d)))[0, 1]:.2f}")

# %% [markdown]
# ## 5 · At full settings: the shipped network
#
# A lab-sized run (60 images, 30 epochs at 64 px) is short for a network that must learn a lesion's
# shape from noisy labels. The package ships the weakly supervised network for breast trained at full
# settings by a committed script: `python benchmarks/weak_offline.py --n 150 --tasks breast --ship
# breast` (150 phantom images: the offline world's zero-shot pseudo-labels of the 105 training images,
# 100 epochs at 96 px with early stopping on the validation pseudo-labels; ground truth never used for
# training; about 15 min on one CPU thread). Below it segments this notebook's own test images, which
# it never saw (the test split of the phantom world is held out from every training set), and is
# compared with the zero-shot masks on the same images by the paired difference.

# %%
if WORLD == "offline" and TASK == "breast":
    from medclipsam.segmenter import load_segmenter, predict_masks

    shipped, shipped_cfg = load_segmenter("weak-breast", device="cpu")
    test_stems = splits["test"]
    test_images = [read_image(next((data / "images").glob(s + ".*")), mode="grey") for s in test_stems]
    test_gt = [read_mask(next((data / "masks").glob(s + "*"))) for s in test_stems]
    shipped_masks = predict_masks(shipped, test_images, shipped_cfg)
    full_settings = {
        "shipped weak network": [dice(m, g) for m, g in zip(shipped_masks, test_gt)],
        "zero-shot": per_image["zero-shot"],
    }
    for name, v in full_settings.items():
        print(f"{name}: mean test Dice {np.mean(v):.3f} over {len(v)} images "
              f"({sum(not m.any() for m in shipped_masks) if name.startswith('shipped') else '-'} empty masks)")
    state(compare(full_settings, what="test Dice", context="At full settings"))
else:
    print("the shipped network is the offline world's breast network: set WORLD = 'offline', TASK = 'breast'")

# %% [markdown]
# ## What to take away
#
# - Pseudo-labels are noisy; whether a network trained on them does better depends on whether their
#   errors differ from image to image or repeat (section 2's counts).
# - Compare the weak network with the zero-shot masks it learned from on the same test images: the
#   computed sentence of section 1 gives the paired difference and its interval (the paper reports a
#   gain on every task), and the table gives the fully supervised bound.
# - Uncertainty from a checkpoint ensemble is cheap (the checkpoints are saved anyway). Does it point
#   at the doubtful pseudo-labels here? Read the correlation printed in section 4: clearly negative
#   means the more uncertain, the worse the pseudo-label; near zero means it does not.

# %% [markdown]
# ## Self-check
#
# Answer each question in your own words before you unfold its answer.
#
# **1. In stage 4, what is the network trained on, how is its epoch chosen, and where is ground
# truth used?**
#
# <details><summary>Answer</summary>
#
# A Residual UNet is trained with Dice + cross-entropy on the zero-shot masks (pseudo-labels) of the
# training split, and the epoch kept is the one whose predictions best match the *validation
# pseudo-labels*. Ground truth is used only to score (the test table, the diagnostics of sections 2
# and 4) and to train the separate fully supervised network that gives the upper bound. Choosing the
# epoch on ground truth would smuggle labels into a method that claims to need none.
#
# </details>
#
# **2. When can a network trained on noisy pseudo-labels do better than the labels it learned from,
# and when will it copy their mistakes?**
#
# <details><summary>Answer</summary>
#
# Mistakes that differ from image to image (a wrong box here, a leak there) form no pattern: a
# network of limited capacity, trained on many images, fits what the labels have in common and can
# average such mistakes out. Mistakes that repeat (the same kind of dark shadow or cyst taken for
# the lesion on many images) are a pattern the labels share, and the network learns it like any
# other. Section 2 counts which kind the misses are; the weak row beside the zero-shot row shows the
# outcome.
#
# </details>
#
# **3. How is a pseudo-label's uncertainty computed, and how would you know whether it is worth
# using?**
#
# <details><summary>Answer</summary>
#
# The checkpoints saved at the epochs of the weak run form an ensemble; each training image's
# prediction is averaged over them, and its uncertainty is the mean entropy of that averaged
# prediction (high where the members disagree). It is worth using only if it ranks the bad
# pseudo-labels first: a clearly negative correlation between uncertainty and the pseudo-label's
# Dice against the real label. The lesson can check that because the phantom world has labels; with
# real data you would need a small labelled subset to check it before trusting the filter.
#
# </details>
#
# **4. Why compare the weak network with the zero-shot masks on the same test images, and not only
# with the fully supervised network?**
#
# <details><summary>Answer</summary>
#
# The zero-shot masks are the weak network's teacher. Stage 4 is worth running only if training adds
# something over its own labels, and the paired difference over the same test images answers exactly
# that. The fully supervised network answers a different question, how much is lost by training on
# weak labels instead of real ones, and sets the upper bound.
#
# </details>

# %% [markdown]
# **Try next:** another `TASK`; `DROP_UNCERTAIN = 0.4`; more images (`N_IMAGES = 400`).
