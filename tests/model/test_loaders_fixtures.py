"""open_clip and timm checkpoints reproduce the outputs their own libraries recorded."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vit_sae_hooks import HookedViT

from helpers import FIXTURES

TOLERANCE = 1e-4
CASES = {
    "open_clip_tiny_quickgelu": "image_embeds",
    "open_clip_tiny_gelu": "image_embeds",
    "timm_vit_tiny_cls": "output",
    "timm_vit_tiny_clip_style": "output",
}


@pytest.mark.parametrize("fixture", list(CASES))
def test_fixture_matches_recorded_outputs(fixture):
    reference = load_file(FIXTURES / fixture / "reference.safetensors")
    model = HookedViT.from_pretrained(FIXTURES / fixture)
    output, cache = model.run_with_cache(reference["pixel_values"])
    layers = sorted(int(key.split(".")[1]) for key in reference if key.endswith("resid_post"))
    assert layers == list(range(model.cfg.n_layers))
    for layer in layers:
        torch.testing.assert_close(
            cache[f"blocks.{layer}.hook_resid_post"], reference[f"blocks.{layer}.resid_post"], atol=TOLERANCE, rtol=0
        )
    torch.testing.assert_close(output, reference[CASES[fixture]], atol=TOLERANCE, rtol=0)


def test_open_clip_config_is_read():
    quick = HookedViT.from_pretrained(FIXTURES / "open_clip_tiny_quickgelu").cfg
    gelu = HookedViT.from_pretrained(FIXTURES / "open_clip_tiny_gelu").cfg
    assert quick.act_fn == "quick_gelu" and gelu.act_fn == "gelu"
    assert (quick.n_heads, quick.d_head, quick.d_output, quick.ln_pre) == (4, 16, 24, True)


def test_timm_config_is_read():
    cls = HookedViT.from_pretrained(FIXTURES / "timm_vit_tiny_cls").cfg
    clip_style = HookedViT.from_pretrained(FIXTURES / "timm_vit_tiny_clip_style").cfg
    assert (cls.eps, cls.ln_pre, cls.head_type, cls.d_output, cls.patch_bias) == (1e-6, False, "linear", 5, True)
    assert (clip_style.act_fn, clip_style.ln_pre, clip_style.head_type, clip_style.patch_bias) == (
        "quick_gelu", True, "none", False
    )
