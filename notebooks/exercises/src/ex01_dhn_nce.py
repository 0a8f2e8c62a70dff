# %% [markdown]
# # Exercise 1 · DHN-NCE: write the loss of MedCLIP-SAM's first stage
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medclipsam/medclipsam/blob/main/notebooks/exercises/ex01_dhn_nce.ipynb)
#
# MedCLIP-SAM fine-tunes BiomedCLIP on medical image-caption pairs with a contrastive loss called
# **DHN-NCE** (decoupled hard-negative noise-contrastive estimation). In this exercise you write it
# yourself, in two steps, and an autograder compares your code with the package's implementation
# (`medclipsam.losses`) on random batches.
#
# **You will learn** what a contrastive loss computes, what "hard negatives" and "decoupled" mean, and
# how to write such a loss so that it stays finite for large similarities (log-space arithmetic).
#
# **How to work.** Fill in the cells marked `# YOUR CODE HERE` (delete the
# `raise NotImplementedError()` line), then run the check cell below each one. A check prints what
# differs from the reference, on which input, and often the mistake by name. Rerun until it says
# `[PASS]`. About 45 minutes; a CPU is enough.

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
SMOKE = False    # CI: fewer random cases
SEED = 0         # seed of the random cases the checks draw

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from medclipsam import exercises as ex

if WORLD != "offline":
    raise ValueError("the exercises run in the offline world: set WORLD = 'offline'")
torch.manual_seed(SEED)
N_TRIALS = 3 if SMOKE else 10


# %% [markdown]
# ## 1 · The similarity matrix and the hard-negative weights
#
# A batch holds $B$ image-caption pairs. The image and text towers give embeddings $I_i$ and $T_j$;
# after L2-normalisation their similarity, scaled by a temperature $\tau$, is
#
# $$ s_{ij} = \frac{I_i \cdot T_j}{\lVert I_i \rVert \, \lVert T_j \rVert \, \tau}. $$
#
# Row $i$ of the matrix $S = (s_{ij})$ holds image $i$ against every caption: the diagonal $s_{ii}$ is
# its own caption (the **positive**), every other entry a **negative**. A negative that already looks
# like the positive (a high $s_{ij}$) is a *hard* negative: "tumour in the upper left" against "tumour
# in the upper right". DHN-NCE gives those more weight:
#
# $$ w_{ij} = (B-1)\,\frac{e^{\beta s_{ij}}}{\sum_{k \ne i} e^{\beta s_{ik}}} \quad (j \ne i),
# \qquad w_{ii} = 0 . $$
#
# The weights of a row sum to $B-1$, the number of negatives: with $\beta = 0$ every weight is 1 (the
# plain loss); with $\beta > 0$ harder negatives take a bigger share.
#
# **Your task:** write `hard_negative_weights(sim, beta)`, taking a square $(B, B)$ matrix (rows =
# anchors) and returning the $(B, B)$ weights. Tip: set the diagonal of $\beta S$ to $-\infty$ and take
# a softmax along each row (`torch.softmax(..., dim=1)`): $e^{-\infty} = 0$ removes the positive, and
# softmax subtracts the row maximum before exponentiating, so $\beta s = 150$ does not overflow.

# %% tags=["solution"]
def hard_negative_weights(sim: torch.Tensor, beta: float) -> torch.Tensor:
    """w_ij = (B-1) exp(beta s_ij) / sum_{k != i} exp(beta s_ik) for j != i, and 0 on the diagonal."""
    ### BEGIN SOLUTION
    b = sim.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=sim.device)
    return (b - 1) * torch.softmax((beta * sim).masked_fill(eye, float("-inf")), dim=1)
    ### END SOLUTION


# %% tags=["check"]
ex.check_hard_negative_weights(hard_negative_weights, n_trials=N_TRIALS, seed=SEED, strict=True);


# %% [markdown]
# ## 2 · The loss
#
# The image-to-text loss asks each image to pick its own caption out of the batch. For DHN-NCE the
# positive is **not** in the denominator (that is the *decoupling*), and each negative is weighted:
#
# $$ L_{v \to t} = \frac{1}{B} \sum_{i=1}^{B} \Big[ -s_{ii} + \log \sum_{j \ne i} w_{ij}\, e^{s_{ij}} \Big]
# \quad\text{with weights from } \beta_1 . $$
#
# The text-to-image loss $L_{t \to v}$ is the same formula on the transposed matrix $S^\top$ (its rows are
# the captions), with $\beta_2$. The loss is their **sum**, $L = L_{v \to t} + L_{t \to v}$.
#
# For comparison, the CLIP loss (InfoNCE) keeps the positive in the denominator,
# $\log\big(e^{s_{ii}} + \sum_{j \ne i} e^{s_{ij}}\big)$, and weighs every negative 1.
#
# **Your task:** write `dhn_nce(img, txt, tau, beta1, beta2)` for embeddings `img`, `txt` of shape
# $(B, D)$ (not necessarily normalised), returning a 0-d tensor. Hints:
#
# - `F.normalize(x, dim=-1)` L2-normalises rows;
# - work in log space so that $\tau = 0.01$ (similarities near 100, $e^{100}$ = inf in float32) stays
#   finite: $\log \sum_{j \ne i} w_{ij} e^{s_{ij}} = \operatorname{logsumexp}_{j \ne i}(\log w_{ij} + s_{ij})$,
#   with `torch.logsumexp` and `torch.log_softmax` (or the log of your weights, with the diagonal kept at $-\infty$);
# - the weights are part of the formula: keep them in the graph (no `.detach()`), the check compares
#   gradients too.

# %% tags=["solution"]
def dhn_nce(img: torch.Tensor, txt: torch.Tensor, tau: float = 0.6, beta1: float = 0.15,
            beta2: float = 0.15) -> torch.Tensor:
    """DHN-NCE of B matching (image, text) embedding pairs: L_v2t(beta1) + L_t2v(beta2)."""
    ### BEGIN SOLUTION
    sim = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T / tau

    def one_direction(s: torch.Tensor, beta: float) -> torch.Tensor:
        b = s.shape[0]
        eye = torch.eye(b, dtype=torch.bool, device=s.device)
        log_w = math.log(b - 1) + torch.log_softmax((beta * s).masked_fill(eye, float("-inf")), dim=1)
        terms = (log_w + s).masked_fill(eye, float("-inf"))
        return (torch.logsumexp(terms, dim=1) - s.diagonal()).mean()

    return one_direction(sim, beta1) + one_direction(sim.T, beta2)
    ### END SOLUTION


# %% tags=["check"]
ex.check_dhn_nce(dhn_nce, n_trials=N_TRIALS, seed=SEED, strict=True);

# %% [markdown]
# ## 3 · What the weights do on real embeddings
#
# Below, the toy CLIP embeds a batch of phantom images and captions. For each anchor image, we plot
# the weight your `hard_negative_weights` gives each negative caption against its similarity, for
# several $\beta$, and compare your DHN-NCE with InfoNCE and DCL (the decoupled loss without
# weights) on this batch.

# %%
from medclipsam import losses
from medclipsam.data import PhantomPairs
from medclipsam.models import load_clip

clip = load_clip("toy")
pairs = PhantomPairs(n_per_task=4 if SMOKE else 8, split="test", seed=SEED, captions="one",
                     transform=clip.preprocess)
images = torch.stack([im for im, _ in pairs])
with torch.no_grad():
    img_emb = clip.model.encode_image(images)
    txt_emb = clip.model.encode_text(clip.tokenize([c for _, c in pairs]))
tau = 1 / float(clip.model.logit_scale.detach().exp())  # the model's own temperature
sim = F.normalize(img_emb, dim=-1) @ F.normalize(txt_emb, dim=-1).T / tau
off = ~torch.eye(len(sim), dtype=torch.bool)

fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
for beta in (0.0, 0.05, 0.15, 0.5):
    w = hard_negative_weights(sim, beta)
    ax[0].scatter(sim[off], w[off], s=8, label=f"beta = {beta}")
ax[0].axhline(1.0, color="grey", lw=0.5)
ax[0].set(xlabel="similarity s_ij of a negative", ylabel="its weight w_ij", title="harder negatives weigh more")
ax[0].legend()
im = ax[1].imshow(sim, cmap="viridis")
ax[1].set(title="S: images (rows) x captions (columns)", xlabel="caption j", ylabel="image i")
plt.colorbar(im, ax=ax[1])
plt.tight_layout()
plt.show()

print(f"B = {len(sim)} pairs, tau = {tau:.3f}")
print(f"your DHN-NCE     {float(dhn_nce(img_emb, txt_emb, tau=tau)):.4f}")
print(f"package DHN-NCE  {float(losses.dhn_nce(img_emb, txt_emb, tau=tau)):.4f}")
print(f"DCL              {float(losses.dcl(img_emb, txt_emb, tau=tau)):.4f}")
print(f"InfoNCE          {float(losses.info_nce(img_emb, txt_emb, tau=tau)):.4f}")

# %% [markdown]
# ## To think about (not graded)
#
# - The diagonal of $S$ (the true pairs) is bright, but so are many off-diagonal entries: captions of
#   one task differ by a word or two. Those are the hard negatives; which weights do they get?
# - With $\beta = 0$, which loss does DHN-NCE become? And with the positive put back in the
#   denominator?
# - InfoNCE flattens to 0 once the positive beats the negatives; why does the decoupled loss keep
#   pulling the pair together? (Notebook `02_dhn_nce.ipynb` plots it.)
# - The paper uses $\tau = 0.6$ and $\beta = 0.15$: similarities then stay within $\pm 1.7$, so how much
#   do the weights differ from 1?
