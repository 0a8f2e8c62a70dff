"""M2IB: a per-image information bottleneck on the image tower, trained to keep what the text needs.

MedCLIP-SAMv2's saliency method (Wang, Rudner and Wilson, "Visual explanations of image-text
representations via multi-modal information bottleneck attribution", NeurIPS 2023). After one
block of the image tower, every token feature x (per token, per channel) is replaced by

    z = lambda * x + (1 - lambda) * eps,     lambda = sigmoid(alpha),

and alpha (one value per token and channel, per image; the model is frozen) is trained for a few
Adam steps to minimise ``beta * KL - cos(text feature, image feature)``, where KL is
``KL(N(lambda * x, (1 - lambda)^2) || N(0, 1))`` per element: how much of x still gets through.
The saliency of a patch is its KL summed over channels: the information the image embedding
needed from that patch to stay close to the text.

Noise conventions (``noise=``):

* ``"standardized"`` (default): the information bottleneck as Schulz et al. (IBA, ICLR 2020)
  define it. The features are standardised per channel with their mean and standard deviation
  over this image's tokens at that layer (prefix tokens included), the KL is taken on the standardised features, and the
  replacement noise is ``eps ~ N(mu_c, sigma_c^2)`` in feature units. KL against N(0, 1) then
  measures information relative to what the layer's features look like.
* ``"reference"``: what the M2IB and MedCLIP-SAMv2 code does: raw features, ``eps ~ N(0, 1)``,
  KL of the raw features against N(0, 1). Their ``var``/``vvar`` option builds a noise scale that
  the bottleneck never reads, so it changes nothing. On a ViT's residual stream (channel scales
  far from 1, a few outlier channels) raw-feature KL is dominated by the channels with the
  largest values, whatever the text.

Other conventions, the same as the reference unless said: alpha starts at 5 (lambda = 0.993:
almost everything passes at first); Adam, lr 1, 10 steps; ``noise_samples`` (10) noisy copies
of each image per step, the cosine averaged over them; the KL averaged over all tokens (prefix
included) and channels in the loss. The map is built from the KL of the *final* alpha (the
reference keeps the KL of its last forward pass, one Adam step earlier), prefix tokens (CLS)
dropped, resized to the input with bilinear interpolation (half-pixel centres, as everywhere
in this package) and min-max normalised.

The hook, the frozen model and the final resize/normalise are the CAM core's
(:mod:`medclipsam.saliency.cam`); the bottleneck and its training are this module's own.

Layer: ``layer_index`` counts blocks from 0, like the reference's ``vlayer``: the bottleneck
sits on the output of that block. The default is ``round(0.75 * depth)``: 9 of 12 for
BiomedCLIP's ViT-B/16 (MedCLIP-SAMv2's setting for breast ultrasound; it searches 7-9), 18 of
24 for a ViT-L. With CLS-token pooling the last block's patch tokens never reach the output, so
the default is kept below the last block there; with average pooling (the toy CLIP, 4 blocks)
``round(0.75 * 4) = 3`` is the last block, whose patch tokens feed the pooled embedding directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cam import frozen, hooked, upsample_and_normalize
from .targets import TargetLayer, resolve_target_layer

__all__ = ["M2IB_DEFAULTS", "NOISE_MODES", "default_layer_index", "m2ib", "m2ib_target"]

NOISE_MODES = ("standardized", "reference")
#: The reference's settings (MedCLIP-SAMv2 / M2IB), also this module's defaults.
M2IB_DEFAULTS: dict = {"beta": 0.1, "steps": 10, "lr": 1.0, "noise_samples": 10, "init_alpha": 5.0}


def _blocks(model: torch.nn.Module) -> tuple[torch.nn.ModuleList | None, str, bool]:
    """The image tower's block list, its dotted name and whether the tower pools a CLS token."""
    visual = getattr(model, "visual", model)
    if hasattr(visual, "trunk") and hasattr(visual.trunk, "blocks"):  # timm ViT (BiomedCLIP)
        pool = getattr(visual.trunk, "global_pool", "token")
        return visual.trunk.blocks, "visual.trunk.blocks", pool not in ("avg", "avgmax", "max", "map")
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):  # open_clip ViT
        simple_cls = getattr(visual, "pool_type", "tok") == "tok" and getattr(visual, "attn_pool", None) is None
        return visual.transformer.resblocks, "visual.transformer.resblocks", simple_cls
    return None, "", False


def default_layer_index(depth: int, cls_pooled: bool) -> int:
    """0-based index of the block whose output gets the bottleneck: ``round(0.75 * depth)``,
    never the last block when a CLS token is pooled (its patch tokens would not reach the
    output), and at least 0."""
    if depth < 1:
        raise ValueError(f"an image tower needs at least one block, got depth {depth}")
    idx = min(round(0.75 * depth), depth - 1)
    if cls_pooled and idx == depth - 1:
        idx = depth - 2
    return max(idx, 0)


def m2ib_target(model: torch.nn.Module, layer_index: int | None = None) -> TargetLayer:
    """The :class:`TargetLayer` M2IB hooks: block ``layer_index`` of a ViT image tower (open_clip
    or timm), default :func:`default_layer_index`; ``visual.layer3`` of a ModifiedResNet."""
    blocks, prefix, cls_pooled = _blocks(model)
    if blocks is None:
        visual = getattr(model, "visual", model)
        if hasattr(visual, "layer3") and layer_index is None:
            return resolve_target_layer(model, layer="visual.layer3")
        raise ValueError(
            f"m2ib does not know the blocks of a {type(visual).__name__} image tower; pass "
            "target=resolve_target_layer(model, layer='<dotted path of a block>')"
        )
    depth = len(blocks)
    if layer_index is None:
        layer_index = default_layer_index(depth, cls_pooled)
    if not -depth <= layer_index < depth:
        raise ValueError(f"layer_index {layer_index} is out of range for an image tower of {depth} blocks")
    return resolve_target_layer(model, layer=f"{prefix}.{layer_index % depth}")


def _kl(alpha: torch.Tensor, xh: torch.Tensor) -> torch.Tensor:
    """KL(N(lambda * xh, (1 - lambda)^2) || N(0, 1)) per element, lambda = sigmoid(alpha)."""
    lam = torch.sigmoid(alpha)
    # -0.5 * log((1 - lambda)^2) = -log(1 - sigmoid(alpha)) = -logsigmoid(-alpha), stable for large alpha
    return 0.5 * ((lam * xh) ** 2 + (1 - lam) ** 2 - 1) - F.logsigmoid(-alpha)


def m2ib(
    model: torch.nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    *,
    target: TargetLayer | None = None,
    layer_index: int | None = None,
    beta: float = 0.1,
    steps: int = 10,
    lr: float = 1.0,
    seed: int = 0,
    noise: str = "standardized",
    noise_samples: int = 10,
    init_alpha: float = 5.0,
) -> torch.Tensor:
    """M2IB saliency maps ``[B, H, W]`` in [0, 1] at the input resolution.

    ``images``: preprocessed ``[B, 3, H, W]``; ``text_features``: ``[B, D]`` or ``[1, D]``
    (normalised or not), one prompt per image. ``target`` (a block's :class:`TargetLayer`) or
    ``layer_index`` chooses where the bottleneck goes (default :func:`m2ib_target`). ``noise``:
    ``"standardized"`` or ``"reference"`` (see the module docstring). Deterministic for a given
    ``seed`` on one device. The model's parameters are frozen while it runs (their
    ``requires_grad`` flags are put back, no ``.grad`` is created) and its train/eval modes are
    restored; it runs in eval mode.
    """
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
    if images.ndim != 4:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
    if steps < 0 or noise_samples < 1:
        raise ValueError(f"steps must be >= 0 and noise_samples >= 1, got {steps} and {noise_samples}")
    if target is not None and layer_index is not None:
        raise ValueError("pass target= or layer_index=, not both")
    b = images.shape[0]
    if text_features.ndim != 2 or text_features.shape[0] not in (1, b):
        raise ValueError(
            f"text_features must be [1, D] or [{b}, D] for {b} images, got {tuple(text_features.shape)}"
        )
    target = target or m2ib_target(model, layer_index)
    device = next(model.parameters()).device
    s = int(noise_samples)
    x_in = images.detach().to(device).repeat_interleave(s, dim=0)
    txt = F.normalize(text_features.detach().to(device).float(), dim=-1).expand(b, -1)
    txt = txt.repeat_interleave(s, dim=0)
    seq_first = getattr(getattr(getattr(model, "visual", model), "transformer", None), "batch_first", True) is False

    gen: dict[str, torch.Generator] = {}
    state: dict[str, torch.Tensor] = {}
    alpha_box: dict[str, torch.Tensor] = {}

    def bottleneck(_m, _i, out):
        feats = out[0] if isinstance(out, tuple) else out
        conv = feats.ndim == 4
        if conv:  # [B*S, C, h, w] -> tokens [B*S, h*w, C]
            n_ch, h, w = feats.shape[1:]
            state["hw"] = torch.tensor([h, w])
            tok = feats.flatten(2).transpose(1, 2)
        elif seq_first:  # [N, B*S, C]
            tok = feats.transpose(0, 1)
        else:
            tok = feats
        if tok.ndim != 3 or tok.shape[0] != b * s:
            raise RuntimeError(f"{target.name}: unexpected output shape {tuple(feats.shape)} for a bottleneck")
        x = tok.float().reshape(b, s, *tok.shape[1:])  # [B, S, N, C]; the S copies are identical
        if noise == "standardized":
            ref = x[:, :1].detach()
            mu = ref.mean(dim=2, keepdim=True)
            sd = ref.std(dim=2, keepdim=True).clamp_min(1e-5)
        else:
            mu, sd = torch.zeros((), device=x.device), torch.ones((), device=x.device)
        xh = (x - mu) / sd
        if "alpha" not in alpha_box:
            alpha_box["alpha"] = torch.full(
                (b, 1, *x.shape[2:]), float(init_alpha), device=x.device, requires_grad=True
            )
        alpha = alpha_box["alpha"]
        if "g" not in gen:
            gen["g"] = torch.Generator(device=x.device).manual_seed(int(seed))
        eps = torch.randn(x.shape, generator=gen["g"], device=x.device, dtype=x.dtype)
        lam = torch.sigmoid(alpha)
        z = (lam * xh + (1 - lam) * eps) * sd + mu
        state["xh"] = xh[:, 0].detach()
        state["kl"] = _kl(alpha, xh[:, :1])
        z = z.reshape(tok.shape).to(feats.dtype)
        if conv:
            z = z.transpose(1, 2).reshape(b * s, n_ch, h, w)
        elif seq_first:
            z = z.transpose(0, 1)
        return (z, *out[1:]) if isinstance(out, tuple) else z

    with frozen(model), hooked(target.module, bottleneck), torch.enable_grad():
        if steps == 0:  # the untrained bottleneck's map
            with torch.no_grad():
                model.encode_image(x_in)
        opt = None
        for _ in range(steps):
            img = F.normalize(model.encode_image(x_in).float(), dim=-1)
            cos = (img * txt).sum(-1).view(b, s).mean(1)
            kl = state["kl"].flatten(1).mean(1)
            loss = (beta * kl - cos).sum()  # images are independent: a sum of per-image losses
            if opt is None:
                opt = torch.optim.Adam([alpha_box["alpha"]], lr=lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        kl = _kl(alpha_box["alpha"].detach()[:, 0], state["xh"]).sum(-1)  # [B, N]
        if target.grid is None:  # conv layer: tokens are the h*w positions
            sal = kl.view(b, 1, *state["hw"].tolist())
        else:
            sal = target.to_grid(kl.unsqueeze(-1))
        return upsample_and_normalize(sal[:, 0], images.shape[-2:]).to(images.device)

