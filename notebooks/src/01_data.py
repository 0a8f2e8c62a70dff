# %% [markdown]
# # 01 · Data: the three tasks, the phantom world, and reading medical images
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medclipsam/medclipsam/blob/main/notebooks/01_data.ipynb)
#
# MedCLIP-SAM segments whatever a text prompt names. The paper evaluates it on three tasks:
#
# | task | modality | public data | what is segmented |
# |---|---|---|---|
# | breast | ultrasound | BUSI (780 images) + UDIAT Dataset B (163) | the tumour (benign or malignant) |
# | brain | T1 contrast MRI | Figshare brain-tumour set (3,064 slices) | the tumour (glioma, meningioma, pituitary) |
# | xray | chest X-ray | COVID-QU-Ex | both lungs (two separate regions) |
#
# This lesson shows the data side of the project:
#
# 1. the **phantom world**: procedurally generated images of the three tasks with masks, classes and
#    captions, so the whole method runs offline, on a CPU, in seconds;
# 2. why the phantom images carry **decoys** (a "find the darkest spot" rule must not solve them);
# 3. the **folder data set** (images and masks paired by file name, never by listing order) and split files;
# 4. **reading medical images**: 16-bit files, DICOM, NIfTI, and what the readers do with them.

# %%
# Colab only: install the package into the runtime (JupyterLab and Binder users have it already).
import subprocess
import sys

if "google.colab" in sys.modules:
    url = "git+https://github.com/medclipsam/medclipsam.git"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"medclipsam @ {url}"], check=True)

# %% [markdown]
# ## Parameters
#
# `WORLD = "offline"` uses the built-in phantom world. `WORLD = "real"` with `DATA_DIR` pointing at a data set
# converted by `data_scripts/` (for example `data/busi`) shows your own data at the end. `SMOKE = True`
# makes everything tiny (that is how CI runs this notebook).

# %% tags=["parameters"]
WORLD = "offline"    # "offline" (phantom world) or "real" (a converted public data set in DATA_DIR)
SMOKE = False        # tiny sizes for a quick check (CI)
DATA_DIR = None      # e.g. "data/busi" after `medclipsam prepare busi ...`
N_PER_TASK = 8       # images per task in the figures
N_RULE = 60          # images per task for the intensity-rule measurement
SIZE = 256           # phantom image size in pixels
SEED = 0

# %%
# What this notebook runs on (versions, device, optional extras): quote it when you ask for help.
from medclipsam import show_environment

show_environment(world=WORLD)

# %%
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from medclipsam.data import (
    FolderDataset,
    PairingError,
    load_array,
    load_split,
    phantom,
    read_image,
    write_image,
)
from medclipsam.viz import overlay, sample_grid

if SMOKE:
    N_PER_TASK, N_RULE, SIZE = 4, 12, 160
# The files this lesson writes: a folder under the notebook's working folder, made afresh on every
# run (section 4 breaks its pairing on purpose). Open it in the file browser to see the layout.
WORK = Path("runs/01_data")
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir(parents=True)
print("phantom tasks:", phantom.TASKS)
for task in phantom.TASKS:
    print(f"  {task:7s} classes: {', '.join(phantom.CLASSES[task]):40s} default prompt: {phantom.PROMPTS[task]!r}")

# %% [markdown]
# ## 1. The phantom world
#
# Each phantom sample is generated from a seed, so sample *i* of a split is the same on every machine.
# It holds a grey image, a ground-truth mask, a class label and several captions. The ultrasound has
# speckle, tissue layers and depth attenuation; the MRI has a skull, grey and white matter and ventricles;
# the X-ray has ribs, a spine, a heart shadow and two lung fields. Below, the green line is the
# ground-truth outline; each title is the image's index in the test split and its class.

# %%
samples = {task: phantom.PhantomDataset(task, N_PER_TASK, seed=SEED, size=SIZE, split="test") for task in phantom.TASKS}
for task, ds in samples.items():
    items = [ds[i] for i in range(len(ds))]
    fig = sample_grid(
        [overlay(s.image, outline=s.mask) for s in items],
        [f"#{i} {s.label}" for i, s in enumerate(items)],
        ncols=4, cell_size=2.4, suptitle=f"{task}: the first {len(items)} test images",
        legend=["ground truth (outline)"],
    )
    plt.show()

# %% [markdown]
# ## 2. Captions, and why they are hard negatives of each other
#
# Contrastive training (lesson 02) learns from image-caption pairs. The captions name the modality, the
# finding, its shape and its **location**, with varied wording. Captions of different images of the same
# modality differ only in those details, so each is a *hard negative* for the other images. "Normal"
# images get the same caption skeleton as images with a finding: the model cannot learn "normal" from
# the sentence shape alone.

# %%
for task in phantom.TASKS:
    ds = samples[task]
    print(f"--- {task}")
    for i in range(min(3, len(ds))):
        s = ds[i]
        print(f"  [{s.label}]")
        for c in s.captions[:3]:
            print("     ", c)
normal = phantom.generate_sample("breast", seed=123, size=SIZE, label="normal")
print("--- a normal breast image:")
for c in normal.captions[:3]:
    print("     ", c)

# %% [markdown]
# ## 3. Decoys: brightness alone must not find the finding
#
# A breast lesion in ultrasound is dark (hypoechoic); a tumour in contrast MRI is bright. If that were
# all, "point at the darkest (brightest) spot" would solve the task and the saliency of a text prompt
# would teach nothing. So the phantom world adds **decoys**: dark cysts and acoustic shadows in the
# ultrasound, bright vessels, fat and choroid plexus in the MRI. The finding is then a matter of *shape
# and context*. We measure the naive rule with the *pointing game*: a hit when the picked point lies on
# the finding (the same measure later judges saliency maps).

# %%
RULE = {task: phantom.INTENSITY_RULE[task] for task in ("breast", "brain")}  # the naive baseline
rates = {}
for task, rule in RULE.items():
    ds = phantom.PhantomDataset(task, N_RULE, seed=SEED + 1, size=SIZE, split="val")
    hits = total = 0
    for i in range(len(ds)):
        s = ds[i]
        if not s.mask.any():
            continue  # normal images have nothing to point at
        total += 1
        hits += phantom.pointing_hit(phantom.intensity_rule_point(s.image, rule), s.mask)
    rates[task] = hits / max(total, 1)
    print(f"{task:7s} '{rule} region' rule hits the finding in {hits}/{total} images ({rates[task]:.0%})")

# What the rule picks, on a few images (a point) against the ground truth (green); a normal image
# has no finding to hit or miss.
panels, titles = [], []
for task, rule in RULE.items():
    ds = samples[task]
    for i in range(min(4, len(ds))):
        s = ds[i]
        r, c = phantom.intensity_rule_point(s.image, rule)
        panels.append(overlay(s.image, outline=s.mask, points=[(c, r)]))
        titles.append(f"{task} #{i} ({s.label}): {phantom.pointing_verdict((r, c), s.mask)}")
sample_grid(panels, titles, ncols=4, cell_size=2.6, suptitle="the intensity rule's pick: " + ", ".join(f"{rule} region ({t})" for t, rule in RULE.items()),
            legend=[("the rule's pick", "positive point"), "ground truth (outline)"])
plt.show()

# %% [markdown]
# ## 4. The folder data set: pairing by file stem
#
# Every data set in the project, phantom or real, uses one layout:
#
# ```
# root/images/<stem>.png    root/masks/<stem>.png    root/meta.csv    root/splits.json    (root/captions.csv)
# ```
#
# Images and masks are paired by their file **stem**, never by the order a directory listing happens to
# return (the reference code zips two listings, which silently mispairs when one file is missing or
# sorts differently). A missing or an extra mask is reported by name.

# %%
root = phantom.write_phantom_folder(WORK / "breast", "breast", n=N_PER_TASK * 2, seed=SEED, size=SIZE)
print(sorted(p.name for p in root.iterdir()))
train = FolderDataset(root, split="train")
test = FolderDataset(root, split="test")
print(f"train: {len(train)} images, test: {len(test)} images")
item = train[0]
print({k: (v.shape, v.dtype) if hasattr(v, "shape") else v for k, v in item.items()})

# %%
# Break the pairing on purpose: delete one mask and add a stray one.
victim = sorted((root / "masks").iterdir())[0]
victim.unlink()
some_mask = sorted((root / "masks").iterdir())[0]
(root / "masks" / "stray_extra.png").write_bytes(some_mask.read_bytes())
try:
    FolderDataset(root)
except PairingError as err:
    print("PairingError:", err)

# %% [markdown]
# ## 5. Reading medical images
#
# Clinical images are often not 8-bit PNGs. `read_image` returns an 8-bit RGB (or grey) array for the
# models, with a stated rule for everything else: 16-bit and float images and NIfTI slices are windowed
# to 0..255 (a window you pass, the DICOM window tags, or a robust percentile range), DICOM values are
# first converted with their rescale slope and intercept. `load_array` gives the native values.
# `read_mask` binarises masks with one rule (any non-zero pixel is foreground; JPEG masks use half the
# maximum to ignore compression noise). Errors name the file and the problem.

# %%
s = samples["brain"][0]
img16 = (s.image.astype(np.uint16) * 257 + 100)          # a 16-bit version of a phantom slice
p16 = write_image(WORK / "slice16.png", img16)
back = read_image(p16, mode="grey")
print("16-bit file read as", back.dtype, back.shape, "range", back.min(), back.max())

import nibabel as nib

# NIfTI stores voxels as (x, y, z) with x towards the patient's left and y towards the front; the reader
# shows a slice the way radiology software does (front at the top). So a picture img[row, col] is stored
# as img[::-1].T to come back upright.
slices = [phantom.generate_sample("brain", seed=k, size=SIZE).image for k in range(3)]
vol = np.stack([img[::-1].T for img in slices], axis=2)
nib.save(nib.Nifti1Image(vol.astype(np.int16), np.eye(4)), str(WORK / "volume.nii.gz"))
slice1 = read_image(WORK / "volume.nii.gz", mode="grey", slice_index=1)
native = load_array(WORK / "volume.nii.gz", slice_index=1)
print("NIfTI slice 1:", slice1.shape, "| native values equal the picture we stored:", np.array_equal(native, slices[1]))

(WORK / "broken.png").write_bytes(b"this is not a PNG")
try:
    read_image(WORK / "broken.png")
except Exception as err:
    print(type(err).__name__, ":", err)
fig, axes = plt.subplots(1, 2, figsize=(6, 3))
axes[0].imshow(back, cmap="gray")
axes[0].set_title("16-bit PNG, windowed")
axes[0].axis("off")
axes[1].imshow(slice1, cmap="gray")
axes[1].set_title("NIfTI slice 1")
axes[1].axis("off")
plt.show()

# %% [markdown]
# ## 6. Fixed splits for the public data sets
#
# The papers' train/validation/test splits cannot be rebuilt from the public data. This project ships
# fixed split files (`medclipsam/data/splits/`), so every user of BUSI or UDIAT tests on the same images
# and numbers are comparable. The brain set uses its official patient-wise folds; COVID-QU-Ex and ROCO
# their official folders.

# %%
for name in ("busi", "udiat"):
    split = load_split(name)
    print(f"{name:6s}", {k: len(v) for k, v in split.items()}, "e.g.", split["test"][:3])

# %% [markdown]
# ## 7. Your own data (the real world)
#
# Convert a public data set once, then point `DATA_DIR` at it and set `WORLD = "real"`:
#
# ```bash
# medclipsam prepare busi Dataset_BUSI.zip data/busi          # see data_scripts/README.md
# ```

# %%
if WORLD == "real" and DATA_DIR:
    ds = FolderDataset(DATA_DIR, split="test")
    items = [ds[i] for i in range(min(N_PER_TASK, len(ds)))]
    sample_grid([overlay(it["image"], outline=it["mask"]) for it in items], [it["stem"] for it in items], ncols=4,
                legend=["ground truth (outline)"])
    plt.show()
else:
    print("Toy world: set WORLD = 'real' and DATA_DIR to a converted data set to see your own images here.")

# %% [markdown]
# ## What you saw
#
# - The phantom world mirrors the three tasks of the paper, with classes, captions and decoys.
# - A naive intensity rule finds the finding in only a fraction of the images: localisation needs
#   shape and context, which is what the text-prompted saliency of lesson 03 must supply.
# - Data sets are paired by stem and split by fixed files.

# %% [markdown]
# ## Self-check
#
# Answer each question in your own words before you unfold its answer.
#
# **1. Why does the phantom world put decoys (cysts, shadows, bright vessels, fat) into its
# images?**
#
# <details><summary>Answer</summary>
#
# Without them the finding would simply be the darkest region (ultrasound) or the brightest
# (contrast MRI), and a one-line intensity rule would find it: a saliency map that "works" would
# then prove nothing about the text prompt. With decoys, the finding is told apart by shape and
# context, and the intensity rule, scored with the pointing game in section 3, becomes the baseline
# that later methods must beat.
#
# </details>
#
# **2. What makes two captions of the same task hard negatives for each other, and why do normal
# images get the same caption skeleton as images with a finding?**
#
# <details><summary>Answer</summary>
#
# They share the modality and most of the wording and differ only in the finding, its shape or its
# location, so matching an image to the right one forces the model to look at those details. If
# normal images had a sentence shape of their own, a model could tell "normal" from "finding" by the
# form of the sentence alone, without looking at the image.
#
# </details>
#
# **3. Why are images and masks paired by file stem rather than by the order of two directory
# listings?**
#
# <details><summary>Answer</summary>
#
# Zipping two listings pairs the n-th image with the n-th mask. One missing or extra file, or two
# listings that sort differently, shifts every later pair, and nothing fails: training and
# evaluation silently use the wrong masks. Pairing by stem cannot shift, and a file without a
# partner is reported by name (the `PairingError` of section 4).
#
# </details>
#
# **4. What does `read_image` do with a 16-bit PNG or a DICOM file, and when do you want
# `load_array` instead?**
#
# <details><summary>Answer</summary>
#
# The models take 8-bit pictures, so `read_image` maps the values to 0..255 through a stated window:
# the one you pass, the DICOM window tags, or a robust percentile range; DICOM values are first
# converted with their rescale slope and intercept. The window decides which contrasts the model
# gets to see. `load_array` returns the native values, for anything that needs the real numbers
# (measuring intensities, or choosing your own window).
#
# </details>

# %% [markdown]
# **Try next:** change `SEED` and `SIZE` (non-square sizes work too: `phantom.generate_sample("xray", 0, size=(200, 320))`),
# look at more normal images, or measure the intensity rule on the X-ray lungs.
