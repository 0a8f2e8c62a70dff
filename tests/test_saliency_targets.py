"""The default CAM layer's patch tokens reach the output (non-zero gradient) on every architecture;
with CLS pooling the last block's output gets exactly zero gradient, which is why it is not used."""

from __future__ import annotations

import pytest
import torch
from open_clip.model import CLIP

from medclipsam.saliency import grad_cam, resolve_target_layer, tokens_to_grid

TEXT = {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}


def _vit(pool: str) -> CLIP:
    torch.manual_seed(0)
    vision = {"image_size": 64, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16, "pool_type": pool}
    return CLIP(embed_dim=16, vision_cfg=vision, text_cfg=TEXT).eval()


def _resnet() -> CLIP:
    torch.manual_seed(0)
    vision = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16}
    return CLIP(embed_dim=16, vision_cfg=vision, text_cfg=TEXT).eval()


def _patch_grad(model, target):
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = target.module.register_forward_hook(hook)
    x = torch.randn(2, 3, 64, 64)
    txt = torch.randn(1, 16)
    (model.encode_image(x) @ txt.t()).sum().backward()
    h.remove()
    g = target.to_grid(store["a"].grad)
    return g.abs().max().item()


@pytest.mark.parametrize("factory", [lambda: _vit("tok"), lambda: _vit("avg"), _resnet],
                         ids=["vit-cls", "vit-avg", "modified-resnet"])
def test_default_layer_gets_a_real_gradient(factory):
    model = factory()
    target = resolve_target_layer(model)
    assert _patch_grad(model, target) > 0.0, target.name


def test_cls_pooled_last_block_output_gets_exactly_zero_gradient():
    model = _vit("tok")
    dead = resolve_target_layer(model, layer="visual.transformer.resblocks.1")
    assert _patch_grad(model, dead) == 0.0
    assert "ln_1" in resolve_target_layer(model).name


def test_tokens_to_grid_drops_prefix_tokens():
    t = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 1 prefix + 2x2 grid
    g = tokens_to_grid(t, (2, 2))
    assert g.shape == (2, 3, 2, 2)
    assert torch.equal(g[0, :, 0, 0], t[0, 1]) and torch.equal(g[0, :, 1, 1], t[0, 4])
    with pytest.raises(ValueError, match="grid"):
        tokens_to_grid(t, (3, 3))


def test_unknown_tower_names_the_way_out():
    with pytest.raises(ValueError, match="layer="):
        resolve_target_layer(torch.nn.Linear(2, 2))


def test_grad_cam_maps_are_normalised_and_input_sized():
    model = _vit("avg")
    maps = grad_cam(model, torch.randn(3, 3, 64, 64), torch.randn(1, 16).expand(3, -1))
    assert maps.shape == (3, 64, 64)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0


def test_no_cam_leaves_gradients_on_the_model():
    """Every method takes gradients with respect to the hooked layer alone: parameters that
    require grad get no ``.grad`` (on a GPU that is the model's size in memory per call), and a
    gradient the caller already holds is left as it was."""
    from medclipsam.saliency import METHODS

    model = _vit("avg")
    assert all(p.requires_grad for p in model.parameters())
    x, txt = torch.randn(2, 3, 64, 64), torch.randn(1, 16).expand(2, -1)
    for name, method in METHODS.items():
        kwargs = {"steps": 2, "noise_samples": 2} if name == "m2ib" else {"k": 4} if name == "gscorecam" else {}
        maps = method(model, x, txt, **kwargs)
        assert maps.shape == (2, 64, 64), name
        assert all(p.grad is None for p in model.parameters()), name
    held = torch.ones_like(model.logit_scale)
    model.logit_scale.grad = held.clone()
    grad_cam(model, x, txt)
    assert torch.equal(model.logit_scale.grad, held)
