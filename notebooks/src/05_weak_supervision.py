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
# Why can a network trained on imperfect labels beat those labels? Because the errors are
# **independent**: one image's wrong box is not repeated on the next image, while the appearance of
# the real target is the same on all of them. A network with limited capacity, trained on many images,
# fits what the labels share and averages out what they do not. (The same network trained on the real
# labels is the **fully supervised** upper bound.)
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
WORLD = "toy"          # "toy" (phantom data set, toy models) or "real" (DATA_DIR prepared by medclipsam prepare)
SMOKE = False          # CI: tiny data set and network, few epochs
DEVICE = "auto"
TASK = "breast"        # breast | brain | xray
DATA_DIR = None        # real world: a folder with images/, masks/ and splits.json
N_IMAGES = 150         # toy world: phantom images (70 % train, 10 % val, 20 % test)
EPOCHS = 100           # the validation Dice of small targets stays flat for tens of epochs, then rises
SIZE = 96              # training resolution
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
from medclipsam.viz import overlay, sample_grid

config = WeakConfig(epochs=EPOCHS, size=SIZE, device=DEVICE, seed=SEED)
if SMOKE:
    N_IMAGES = 30
    config = WeakConfig(epochs=3, size=64, batch_size=4, channels=(8, 16, 32), strides=(2, 2), device=DEVICE, seed=SEED)
    OUT_DIR = OUT_DIR + "_smoke"
if WORLD == "toy":
    data = write_phantom_folder(Path(OUT_DIR) / "data" / TASK, TASK, N_IMAGES, seed=SEED, size=256)
    pipe = MedCLIPSAM.toy()
else:
    data = Path(DATA_DIR)
    pipe = MedCLIPSAM.from_pretrained(device=DEVICE)
splits = load_split(data / "splits.json")
print({k: len(v) for k, v in splits.items()}, "images per split in", data)

# %% [markdown]
# ## 1 · Run the whole stage
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
sample_grid(panels, titles, ncols=3, cell_size=3.0, suptitle="pseudo-label (red) and real label (green outline)")
plt.show()

# %% [markdown]
# ## 3 · Training curves
#
# Loss on the pseudo-labels and Dice against the validation pseudo-labels, per epoch. The model kept
# is the epoch with the best validation Dice.

# %%
fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
for name in ("weak", "full"):
    hist = json.loads((out / name / "log.json").read_text())["epochs"]
    ax[0].plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], label=name)
    ax[1].plot([h["epoch"] for h in hist], [h["val_dice"] for h in hist], label=name)
ax[0].set(xlabel="epoch", ylabel="training loss (Dice + CE)")
ax[1].set(xlabel="epoch", ylabel="validation Dice (against its own labels)")
ax[0].legend()
ax[1].legend()
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
    plt.figure(figsize=(4.5, 3.2))
    plt.scatter(u[kept], d[kept], label="kept")
    plt.scatter(u[~kept], d[~kept], label="dropped", marker="x")
    plt.xlabel("ensemble uncertainty")
    plt.ylabel("pseudo-label Dice vs real label")
    plt.legend()
    plt.show()
    if len(u) > 2:
        print(f"Spearman correlation (uncertainty vs pseudo-label Dice): "
              f"{np.corrcoef(np.argsort(np.argsort(u)), np.argsort(np.argsort(d)))[0, 1]:.2f}")

# %% [markdown]
# ## What to take away
#
# - Pseudo-labels are noisy, but their errors are independent from image to image; a network trained
#   on many of them learns what they share.
# - Compare the rows of the table: the weak network against the zero-shot masks it learned from (the
#   paper reports a gain on every task), and against the fully supervised bound. Read the confidence
#   intervals before reading the means.
# - Uncertainty from a checkpoint ensemble is cheap (the checkpoints are saved anyway) and points at
#   the doubtful pseudo-labels.
#
# **Try next:** another `TASK`; `DROP_UNCERTAIN = 0.4`; more images (`N_IMAGES = 400`).
