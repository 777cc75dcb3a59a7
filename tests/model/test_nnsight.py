"""nnsight reaches every HookPoint of a HookedViT, the fast-path ones and an attached SAE's included."""

from __future__ import annotations

import pytest
import torch

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks._tl import has_hooks, run_every_hook

nnsight = pytest.importorskip("nnsight", reason="nnsight is a test extra: pip install -e '.[test]'")


@pytest.fixture
def model() -> HookedViT:
    torch.manual_seed(0)
    config = HookedViTConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, image_size=16, patch_size=8, ln_pre=True)
    return HookedViT(config).eval()


def test_nnsight_reads_the_hooks_fast_paths_skip(model):
    images = torch.randn(2, 3, 16, 16)
    wrapped = nnsight.NNsight(model)
    with wrapped.trace(images):
        # Requested in the order the forward pass computes them, as nnsight requires.
        pre_scale = wrapped.ln_pre.hook_scale.output.save()
        scale = wrapped.blocks[0].ln1.hook_scale.output.save()
        pattern = wrapped.blocks[0].attn.hook_pattern.output.save()
        final_scale = wrapped.ln_final.hook_scale.output.save()
    _, cache = model.run_with_cache(images)
    torch.testing.assert_close(pattern, cache["blocks.0.attn.hook_pattern"])
    torch.testing.assert_close(scale, cache["blocks.0.ln1.hook_scale"])
    torch.testing.assert_close(pre_scale, cache["ln_pre.hook_scale"])
    torch.testing.assert_close(final_scale, cache["ln_final.hook_scale"])
    # Outside a trace the fast paths are back.
    assert not has_hooks(model.blocks[0].attn.hook_pattern)


def test_nnsight_reaches_and_edits_an_attached_saes_hooks(model):
    images = torch.randn(2, 3, 16, 16)
    sae = SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4, hook_name="blocks.0.hook_resid_post"))
    model.add_sae(sae, use_error_term=True)
    acts_name = "blocks.0.hook_resid_post.hook_sae_acts_post"
    wrapped = nnsight.NNsight(model)
    with wrapped.trace(images):
        acts = wrapped.blocks[0].hook_resid_post.hook_sae_acts_post.output.clone().save()
        wrapped.blocks[0].hook_resid_post.hook_sae_acts_post.output[:] = 0
        output = wrapped.output.save()
    _, cache = model.run_with_cache(images)
    torch.testing.assert_close(acts, cache[acts_name])
    ablated = model.run_with_hooks(images, fwd_hooks=[(acts_name, lambda a, hook: torch.zeros_like(a))])
    torch.testing.assert_close(output, ablated, atol=1e-5, rtol=0)
    model.reset_saes()
    assert not any("hook_sae" in name for name, _ in model.named_modules())


def test_run_every_hook_turns_the_fast_paths_off(model):
    assert not has_hooks(model.blocks[0].attn.hook_pattern)
    with run_every_hook():
        assert has_hooks(model.blocks[0].attn.hook_pattern)
    assert not has_hooks(model.blocks[0].attn.hook_pattern)


def test_nnsight_reads_every_hook_point_as_the_cache_does(model):
    images = torch.randn(2, 3, 16, 16)
    model.add_sae(SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4, hook_name="blocks.1.hook_resid_mid")),
                  use_error_term=True)
    _, cache = model.run_with_cache(images)
    names = list(cache.keys())  # in the order the forward pass computes them, as nnsight needs them
    assert set(names) == set(model.hook_dict) and "blocks.1.hook_resid_mid.hook_sae_error" in names
    # nnsight sees a HookPoint's output before its forward hooks (the splice among them) run, so the spliced
    # hook comes before the SAE's own hooks; with the error term its value is the same.
    names.remove("blocks.1.hook_resid_mid")
    names.insert(names.index("blocks.1.hook_resid_mid.hook_sae_input"), "blocks.1.hook_resid_mid")
    wrapped = nnsight.NNsight(model)
    saved = {}
    with wrapped.trace(images):
        for name in names:
            envoy = wrapped
            for part in name.split("."):
                envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
            saved[name] = envoy.output.save()
    for name in names:
        torch.testing.assert_close(saved[name], cache[name], atol=1e-5, rtol=1e-5,
                                   msg=lambda message, name=name: f"{name}: {message}")
    model.reset_saes()
