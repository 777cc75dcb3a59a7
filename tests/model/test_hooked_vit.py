"""HookedViT behaviour: every hook fires once and is writable, fast paths agree, TL tools work, bad input is explained."""

from __future__ import annotations

import pytest
import torch

from vit_sae_hooks import HookedViT, HookedViTConfig, get_act_name
from vit_sae_hooks._tl import ActivationCache
from vit_sae_hooks.errors import HookNameError, InputShapeError

BASE = dict(n_layers=3, d_model=32, n_heads=4, d_mlp=64, image_size=16, patch_size=4)

# Between them these configurations contain every hook the model can have.
CONFIGS = {
    "clip_like": HookedViTConfig(**BASE, ln_pre=True, use_attn_result=True, head_type="linear", d_output=5,
                                 act_fn="quick_gelu"),
    "siglip_like_swiglu_registers": HookedViTConfig(**BASE, mlp_type="swiglu", n_register_tokens=2, pool_type="map",
                                                    pos_embed_prefix=1, head_type="linear_tanh", d_output=7),
    "timm_avg_pool": HookedViTConfig(**BASE, has_cls_token=False, pool_type="mean", final_ln_after_pool=True),
}


def _randomised(cfg: HookedViTConfig, seed: int = 0) -> HookedViT:
    torch.manual_seed(seed)
    model = HookedViT(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith((".w", ".b")) or "b_" in name.rsplit(".", 1)[-1]:
                param.add_(0.3 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(params=list(CONFIGS))
def model(request) -> HookedViT:
    return _randomised(CONFIGS[request.param])


@pytest.fixture
def small_images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_every_hook_fires_exactly_once(model, small_images):
    counts: dict[str, int] = {}

    def count(tensor, hook):
        counts[hook.name] = counts.get(hook.name, 0) + 1

    model.run_with_hooks(small_images, fwd_hooks=[(lambda name: True, count)])
    assert counts == dict.fromkeys(model.hook_dict, 1)


def test_all_configs_together_cover_every_documented_hook():
    names = set()
    for cfg in CONFIGS.values():
        names |= {".".join(p for p in n.split(".") if not p.isdigit()) for n in HookedViT(cfg).hook_dict}
    expected_block = {"hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
                      "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "attn.hook_result",
                      "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre",
                      "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out", "hook_resid_post"}
    expected_top = {"hook_embed", "hook_pos_embed", "hook_full_embed", "ln_pre.hook_scale", "ln_pre.hook_normalized",
                    "ln_final.hook_scale", "ln_final.hook_normalized", "hook_pooled", "hook_output"}
    assert {f"blocks.{n}" for n in expected_block} | expected_top <= names


def _perturb(x: torch.Tensor, hook) -> torch.Tensor:
    # Non-uniform on purpose: a uniform scale and shift before a LayerNorm would cancel out.
    return x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)


def test_every_hook_is_writable(model, small_images):
    clean = model(small_images)
    for name in model.hook_dict:
        edited = model.run_with_hooks(small_images, fwd_hooks=[(name, _perturb)])
        assert not torch.allclose(edited, clean, atol=1e-4), f"editing {name} did not change the output"


def test_edit_changes_exactly_the_downstream_values(small_images):
    model = _randomised(CONFIGS["clip_like"])
    _, clean = model.run_with_cache(small_images)
    target = "blocks.1.hook_mlp_out"
    with model.hooks(fwd_hooks=[(target, lambda x, hook: torch.zeros_like(x))]):
        _, edited = model.run_with_cache(small_images)
    assert torch.equal(edited[target], torch.zeros_like(clean[target]))
    torch.testing.assert_close(edited["blocks.1.hook_resid_mid"], clean["blocks.1.hook_resid_mid"])
    torch.testing.assert_close(edited["blocks.1.hook_resid_post"], clean["blocks.1.hook_resid_mid"])


def test_sdpa_and_explicit_attention_agree(model, small_images):
    fast, fast_cache = model.run_with_cache(small_images, names_filter=lambda n: n.endswith("hook_z"))
    noop = [(lambda n: n.endswith("hook_pattern"), lambda x, hook: None)]
    with model.hooks(fwd_hooks=noop):
        explicit, explicit_cache = model.run_with_cache(
            small_images, names_filter=lambda n: n.endswith(("hook_z", "hook_pattern"))
        )
    assert any(name.endswith("hook_pattern") for name in explicit_cache.keys())
    torch.testing.assert_close(explicit, fast, atol=1e-5, rtol=1e-5)
    for name in fast_cache.keys():
        torch.testing.assert_close(explicit_cache[name], fast_cache[name], atol=1e-5, rtol=1e-5)


def test_fused_and_explicit_layer_norm_agree(model, small_images):
    fast = model(small_images)
    explicit, cache = model.run_with_cache(small_images, names_filter=lambda n: n.endswith("hook_scale"))
    assert len(cache) > 0
    torch.testing.assert_close(explicit, fast, atol=1e-5, rtol=1e-5)


def test_pattern_is_a_softmax_of_scores(small_images):
    model = _randomised(CONFIGS["clip_like"])
    _, cache = model.run_with_cache(small_images)
    scores = cache["blocks.0.attn.hook_attn_scores"].double()
    q, k = cache["blocks.0.attn.hook_q"].double(), cache["blocks.0.attn.hook_k"].double()
    torch.testing.assert_close(scores, torch.einsum("bqhe,bkhe->bhqk", q, k) / model.cfg.d_head**0.5, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"].double(), scores.softmax(-1), atol=1e-6, rtol=0)


def test_run_with_cache_gives_a_transformer_lens_activation_cache(small_images):
    model = _randomised(CONFIGS["clip_like"])
    _, cache = model.run_with_cache(small_images)
    assert isinstance(cache, ActivationCache)
    n_layers = model.cfg.n_layers
    accumulated = cache.accumulated_resid()
    assert accumulated.shape == (n_layers + 1, 2, model.cfg.n_ctx, model.cfg.d_model)
    torch.testing.assert_close(accumulated[-1], cache["resid_post", -1])
    with_ln = cache.accumulated_resid(apply_ln=True)
    torch.testing.assert_close(with_ln[-1], cache["ln_final.hook_normalized"], atol=1e-5, rtol=1e-5)
    stacked = torch.stack([cache["resid_post", i] for i in range(n_layers)])
    torch.testing.assert_close(cache.stack_activation("resid_post"), stacked)
    assert cache["blocks.1.attn.hook_result"].shape == (2, model.cfg.n_ctx, model.cfg.n_heads, model.cfg.d_model)
    torch.testing.assert_close(
        cache["blocks.1.attn.hook_result"].sum(-2) + model.blocks[1].attn.b_O, cache["blocks.1.hook_attn_out"],
        atol=1e-5, rtol=1e-5,
    )


def test_decompose_resid_sums_to_the_residual_stream(small_images):
    # Without ln_pre the residual stream is exactly embed + pos_embed + every sublayer's output.
    model = _randomised(HookedViTConfig(**BASE))
    _, cache = model.run_with_cache(small_images)
    components, labels = cache.decompose_resid(return_labels=True)
    assert labels[:2] == ["embed", "pos_embed"] and len(labels) == 2 + 2 * model.cfg.n_layers
    torch.testing.assert_close(components.sum(0), cache["resid_post", -1], atol=1e-5, rtol=1e-5)


def test_stop_and_start_at_layer_compose(model, small_images):
    full, cache = model.run_with_cache(small_images)
    for layer in (0, 1, -1):
        resid = model(small_images, stop_at_layer=layer)
        index = layer % model.cfg.n_layers
        torch.testing.assert_close(resid, cache[f"blocks.{index}.hook_resid_pre"])
        torch.testing.assert_close(model(resid, start_at_layer=layer), full, atol=1e-5, rtol=1e-5)
    assert model(small_images, return_type=None) is None
    torch.testing.assert_close(model(small_images, return_type="pooled"), cache["hook_pooled"])


def test_hooks_are_removed_after_runs_and_exceptions(small_images):
    model = _randomised(CONFIGS["clip_like"])
    clean = model(small_images)
    model.run_with_hooks(small_images, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 0)])
    with pytest.raises(RuntimeError, match="boom"), model.hooks(fwd_hooks=[("hook_pooled", lambda x, hook: x * 0)]):
        raise RuntimeError("boom")
    assert all(not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())
    torch.testing.assert_close(model(small_images), clean)


def test_gradients_flow_through_hooks_to_the_input(small_images):
    model = _randomised(CONFIGS["clip_like"])
    images = small_images.clone().requires_grad_(True)
    grads = {}
    model.add_hook("blocks.1.hook_resid_post", lambda grad, hook: grads.setdefault("g", grad), dir="bwd")
    model(images).sum().backward()
    model.reset_hooks()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert grads["g"].shape == (2, model.cfg.n_ctx, model.cfg.d_model)


def test_get_act_name():
    assert get_act_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert get_act_name("pattern", 2) == "blocks.2.attn.hook_pattern"
    assert get_act_name("mlp_out", 0) == "blocks.0.hook_mlp_out"
    assert get_act_name("pooled") == "hook_pooled"
    model = HookedViT(CONFIGS["clip_like"])
    for short, layer in [("resid_pre", 0), ("q", 1), ("z", 2), ("attn_out", 1), ("post", 0), ("scale", 1)]:
        name = get_act_name(short, layer, "ln1" if short == "scale" else None)
        assert name in model.hook_dict, name


def test_save_and_load_round_trip(tmp_path, small_images):
    model = _randomised(CONFIGS["siglip_like_swiglu_registers"])
    model.save_pretrained(tmp_path)
    loaded = HookedViT.from_pretrained(tmp_path)
    assert loaded.cfg == model.cfg
    torch.testing.assert_close(loaded(small_images), model(small_images))


def test_saved_checkpoint_missing_a_parameter_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    from vit_sae_hooks.errors import CheckpointFormatError

    HookedViT(CONFIGS["clip_like"]).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["blocks.1.mlp.W_out"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointFormatError, match=r"missing parameters \['blocks\.1\.mlp\.W_out'\]"):
        HookedViT.from_pretrained(tmp_path)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "images, message",
    [
        (torch.randn(3, 16, 16), r"add a batch dimension"),
        (torch.randn(2, 1, 16, 16), r"1 channels but the model expects 3"),
        (torch.randn(2, 3, 20, 20), r"expects 16x16.*interpolate_pos_encoding=True"),
        (torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8), r"must be a float tensor"),
        ([[1.0]], r"must be a torch.Tensor"),
    ],
)
def test_bad_images_are_explained(images, message):
    model = HookedViT(CONFIGS["clip_like"])
    with pytest.raises(InputShapeError, match=message):
        model(images)


def test_interpolation_needs_sizes_that_fit_the_patches():
    model = HookedViT(CONFIGS["clip_like"])
    with pytest.raises(InputShapeError, match="multiples of the patch size"):
        model(torch.randn(1, 3, 18, 18), interpolate_pos_encoding=True)
    assert model(torch.randn(1, 3, 24, 20), interpolate_pos_encoding=True).shape == (1, 5)


def test_bad_residual_for_start_at_layer():
    model = HookedViT(CONFIGS["clip_like"])
    with pytest.raises(InputShapeError, match=r"residual stream \[batch, pos, 32\]"):
        model(torch.randn(2, 17, 31), start_at_layer=1)
    with pytest.raises(ValueError, match="out of range"):
        model(torch.randn(2, 3, 16, 16), stop_at_layer=7)


def test_unknown_hook_names_suggest_the_closest(small_images):
    model = HookedViT(CONFIGS["clip_like"])
    with pytest.raises(HookNameError, match=r"blocks 0-2.*Did you mean 'blocks.2.hook_resid_post'"):
        model.run_with_hooks(small_images, fwd_hooks=[("blocks.3.hook_resid_post", lambda x, hook: x)])
    with pytest.raises(HookNameError, match=r"hook_resid_mid"):
        model.run_with_cache(small_images, names_filter=["blocks.0.hook_resid_midd"])
    with pytest.raises(HookNameError):
        model.add_hook("nonsense", lambda x, hook: x)


def test_config_errors_are_explained():
    from vit_sae_hooks.errors import ConfigError

    with pytest.raises(ConfigError, match="not divisible by n_heads"):
        HookedViTConfig(**{**BASE, "n_heads": 5})
    with pytest.raises(ConfigError, match="needs a CLS token"):
        HookedViTConfig(**BASE, has_cls_token=False)
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        HookedViTConfig(**{**BASE, "image_size": 18})
    with pytest.raises(ConfigError, match="activation function 'swishy'"):
        HookedViTConfig(**BASE, act_fn="swishy")
    with pytest.raises(ConfigError, match="unknown HookedViTConfig fields"):
        HookedViTConfig.from_dict({**BASE, "n_layer": 3})
