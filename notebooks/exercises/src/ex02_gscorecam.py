# %% [markdown]
# # Exercise 2 · gScoreCAM: where in the image is the prompt?
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medclipsam/medclipsam/blob/main/notebooks/exercises/ex02_gscorecam.ipynb)
#
# Stage 2 of MedCLIP-SAM turns "how well does this image match *breast tumor*?" into a map of *where*
# the match comes from. gScoreCAM (Chen et al., 2022) does it in four steps, and you write each one:
#
# 1. **select** the $k$ channels of a layer whose activation raises the image-text score most;
# 2. turn each selected channel into a **mask** over the image;
# 3. score each masked image with CLIP and turn the scores into **weights** (a softmax);
# 4. **combine** the channels with those weights into the map.
#
# An autograder checks each function against the package (`medclipsam.saliency.gscorecam`) on random
# inputs, and at the end your four functions together must reproduce the package's maps on the toy
# CLIP. About 60 minutes; a CPU is enough.
#
# Fill in the cells marked `# YOUR CODE HERE` (delete `raise NotImplementedError()`) and run the check
# below each one until it says `[PASS]`.

# %%
# Colab only: install the package into the runtime (JupyterLab and Binder users have it already).
import subprocess
import sys

if "google.colab" in sys.modules:
    url = "git+https://github.com/medclipsam/medclipsam.git"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"medclipsam @ {url}"], check=True)

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
WORLD = "offline"  # the exercises run in the offline world (the toy CLIP and phantom images, any CPU)
SMOKE = False    # CI: fewer random cases and images
SEED = 0         # seed of the random cases and the phantom images
K = 24           # channels gScoreCAM keeps (the toy CLIP layer has 128; the paper keeps 300 of 768)

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from medclipsam import exercises as ex
from medclipsam.data.phantom import PROMPTS, TASKS, PhantomDataset
from medclipsam.models import load_clip
from medclipsam.saliency.gscorecam import gscorecam
from medclipsam.viz import overlay, sample_grid

if WORLD != "offline":
    raise ValueError("the exercises run in the offline world: set WORLD = 'offline'")
N_TRIALS = 3 if SMOKE else 8
clip = load_clip("toy")
sample = PhantomDataset("breast", 1, seed=SEED, size=224, split="test", normal_fraction=0.0)[0]
x, geom = clip.prepare(sample.rgb)
images = x[None]                                        # [1, 3, 224, 224], the model input
with torch.no_grad():
    text = clip.model.encode_text(clip.tokenize([PROMPTS["breast"]])).float()
act, grads, logit_scale = ex.layer_activations(clip.model, images, text)
print("activations A:", tuple(act.shape), " gradients dlogit/dA:", tuple(grads.shape),
      f" logit scale: {logit_scale:.2f}")


# %% [markdown]
# ## What you start from
#
# CLIP's score of an image and a prompt is the logit $y = e^{t} \cos(f(x), g(\text{prompt}))$: the
# cosine of the image and text embeddings times the model's learned scale $e^t$ (`logit_scale`,
# already exponentiated above). gScoreCAM looks at one layer of the image tower: its output, reshaped
# to a grid, is $A \in \mathbb{R}^{B \times C \times h \times w}$, $C$ **channels**, each a low-resolution
# $h \times w$ map of one feature. One backward pass gives $\partial y / \partial A$, the same shape.
# `ex.layer_activations` gave you both for a breast ultrasound phantom and the prompt
# "breast tumor" (the toy CLIP: $C = 128$, a $14 \times 14$ grid).
#
# ## Step 1 · Select the channels
#
# A channel's **importance** is the spatial mean of its gradient,
# $\alpha_c = \frac{1}{hw} \sum_{u,v} \partial y / \partial A_{c,u,v}$. Keep the $k$ channels with the
# **largest** $\alpha_c$, largest first. The sign matters: a channel with a large *negative* gradient
# lowers the score when it is active; it is not evidence for the prompt. If $k > C$, keep all $C$.
#
# **Your task:** `select_channels(grads, k)`: `grads` $[B, C, h, w]$ → channel indices $[B, \min(k, C)]$
# (`torch.long`). `torch.topk` returns values and indices, largest first.

# %% tags=["solution"]
def select_channels(grads: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, min(k, C)] of the channels with the largest mean gradient, largest first."""
    ### BEGIN SOLUTION
    importance = grads.mean(dim=(2, 3))                  # [B, C]
    return importance.topk(min(k, grads.shape[1]), dim=1).indices
    ### END SOLUTION


# %% tags=["check"]
ex.check_channel_selection(select_channels, n_trials=N_TRIALS, seed=SEED, strict=True);


# %% [markdown]
# ## Step 2 · Channels as masks
#
# Each kept channel $A_c$ becomes a mask over the input image: upsample it from $h \times w$ to the
# image size $H \times W$ (bilinear, with half-pixel centres: `F.interpolate(..., mode="bilinear",
# align_corners=False)`), then **min-max normalise** it to $[0, 1]$,
# $M_c = (\tilde A_c - \min \tilde A_c) / (\max \tilde A_c - \min \tilde A_c)$, so that $x \odot M_c$
# keeps the image where the channel fires and fades it elsewhere. A constant channel
# ($\max = \min$) has no preference: its mask is all zeros (not NaN).
#
# **Your task:** `channel_masks(act, channels, size)`: `act` $[B, C, h, w]$, `channels` $[B, k]$ (image
# $b$'s own channels in row $b$), `size` $= (H, W)$ → masks $[B, k, H, W]$. `act.gather(1, idx)` or a loop
# over the batch picks the channels.

# %% tags=["solution"]
def channel_masks(act: torch.Tensor, channels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The kept channels upsampled to size (bilinear, align_corners=False), each min-max normalised to [0, 1]."""
    ### BEGIN SOLUTION
    b, _, h, w = act.shape
    kept = act.gather(1, channels[:, :, None, None].expand(-1, -1, h, w))      # [B, k, h, w]
    up = F.interpolate(kept, size=size, mode="bilinear", align_corners=False)  # [B, k, H, W]
    lo = up.amin(dim=(2, 3), keepdim=True)
    hi = up.amax(dim=(2, 3), keepdim=True)
    return torch.where(hi - lo > 1e-8, (up - lo) / (hi - lo).clamp_min(1e-8), torch.zeros_like(up))
    ### END SOLUTION


# %% tags=["check"]
ex.check_channel_masks(channel_masks, n_trials=N_TRIALS, seed=SEED, strict=True);

# %%
# Your masks of the first six kept channels, on the phantom.
chosen = select_channels(grads, K)
masks = channel_masks(act, chosen, tuple(images.shape[-2:]))
panels = [overlay(sample.rgb, outline=sample.mask)]
panels += [overlay(sample.rgb, saliency=geom.to_image(m).numpy()) for m in masks[0, :6]]
titles = ["image, tumour outlined"] + [f"channel {int(c)}" for c in chosen[0, :6]]
sample_grid(panels, titles, ncols=7, cell_size=2.0, colorbar="channel mask (0 = low, 1 = high)",
            legend=["ground truth (outline)"])
plt.show()


# %% [markdown]
# ## Step 3 · Score the masked images, weigh the channels
#
# Each masked image $x \odot M_c$ goes through CLIP; its logit against the prompt,
# $y_c = e^t \cos(f(x \odot M_c), g(\text{prompt}))$, says how much of the prompt's evidence that channel's
# region alone keeps. The weights are a softmax over the $k$ kept channels,
#
# $$ w_c = \frac{e^{y_c}}{\sum_{c'} e^{y_{c'}}}, \qquad y_c = \text{logit\_scale} \cdot \cos_c . $$
#
# The temperature matters: the softmax is over the **logits** (cosines times the logit scale: 14 for the
# toy CLIP, 100 for BiomedCLIP), which makes it much sharper than a softmax of raw cosines.
#
# **Your task:** `gscorecam_weights(cosines, logit_scale)`: cosines $[B, k]$ (one per kept channel) and
# the scale (a float) → weights $[B, k]$, each row summing to 1.

# %% tags=["solution"]
def gscorecam_weights(cosines: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Softmax over the k channels of the masked-image logits logit_scale * cosine."""
    ### BEGIN SOLUTION
    return torch.softmax(logit_scale * cosines, dim=-1)
    ### END SOLUTION


# %% tags=["check"]
ex.check_gscorecam_weights(gscorecam_weights, n_trials=N_TRIALS, seed=SEED, strict=True);


# %% [markdown]
# ## Step 4 · Combine
#
# The map is the weighted sum of the kept channels, with negative evidence cut off, then brought to the
# image size and to $[0, 1]$:
#
# $$ \text{map} = \operatorname{normalise}\Big(\operatorname{upsample}\big(\operatorname{ReLU}(\textstyle\sum_{j} w_j A_{c_j})\big)\Big) $$
#
# in that order: ReLU on the $h \times w$ grid, bilinear upsampling (`align_corners=False`), min-max
# normalisation (an all-zero map stays zero).
#
# **Your task:** `combine_maps(act, channels, weights, size)` → maps $[B, H, W]$.

# %% tags=["solution"]
def combine_maps(act: torch.Tensor, channels: torch.Tensor, weights: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
    """normalise(upsample(ReLU(sum_j w_j A_{c_j}))) as [B, H, W] in [0, 1]."""
    ### BEGIN SOLUTION
    b, _, h, w = act.shape
    kept = act.gather(1, channels[:, :, None, None].expand(-1, -1, h, w))      # [B, k, h, w]
    cam = F.relu((weights[:, :, None, None] * kept).sum(dim=1))                # [B, h, w]
    up = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return torch.where(hi - lo > 1e-8, (up - lo) / (hi - lo).clamp_min(1e-8), torch.zeros_like(up))
    ### END SOLUTION


# %% tags=["check"]
ex.check_combine_maps(combine_maps, n_trials=N_TRIALS, seed=SEED, strict=True);

# %% [markdown]
# ## Step 5 · All together, on the toy CLIP
#
# `ex.gscorecam_with` runs gScoreCAM with your four functions: the layer's activations and gradients,
# your channel selection, your masks, CLIP's cosine for each masked image, your weights and your
# combination. The check compares the result with the package's `gscorecam` on phantom images of the
# three tasks; the figure shows your maps beside the package's, with the finding outlined in green.

# %% tags=["check"]
ex.check_gscorecam_map(select_channels, channel_masks, gscorecam_weights, combine_maps, k=K,
                       n_images=1 if SMOKE else 3, seed=SEED, clip=clip, strict=True);

# %%
panels, titles = [], []
for task in (TASKS[:1] if SMOKE else TASKS):
    s = PhantomDataset(task, 1, seed=SEED, size=224, split="test", normal_fraction=0.0)[0]
    xt, gt = clip.prepare(s.rgb)
    with torch.no_grad():
        tf = clip.model.encode_text(clip.tokenize([PROMPTS[task]])).float()
    mine = ex.gscorecam_with(clip.model, xt[None], tf, k=K, select_channels=select_channels,
                             channel_masks=channel_masks, gscorecam_weights=gscorecam_weights,
                             combine_maps=combine_maps)[0]
    theirs = gscorecam(clip.model, xt[None], tf, k=K)[0]
    for name, m in (("yours", mine), ("package", theirs)):
        panels.append(overlay(s.rgb, saliency=gt.to_image(m).numpy(), outline=s.mask))
        titles.append(f"{task}, {PROMPTS[task]!r}: {name}")
sample_grid(panels, titles, ncols=2, cell_size=3.0, colorbar=True, legend=["ground truth (outline)"])
plt.show()

# %% [markdown]
# ## To think about (not graded)
#
# - Rank the channels by $|\alpha_c|$ instead and compare the maps: which regions appear?
# - Change `K` (8, 24, 128 = all channels, which is ScoreCAM): how does the map change, and what does
#   each extra channel cost? (Notebook `03_gscorecam.ipynb` times it.)
# - Divide the logits by 10 before the softmax: what happens to the weights, and to the map?
