"""TransformerLens's own tools on a HookedViT: its config fields, switches, residual decompositions and
activation-patching functions, run for real against our own computations."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tl_patching

from vit_sae_hooks import HookedViT, HookedViTConfig
from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.experiments import patching

CONFIG = dict(n_layers=3, d_model=32, n_heads=4, d_mlp=64, image_size=16, patch_size=8, head_type="linear", d_output=5)


def _model(ln_pre: bool = True, seed: int = 0) -> HookedViT:
    torch.manual_seed(seed)
    model = HookedViT(HookedViTConfig(**CONFIG, ln_pre=ln_pre)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith((".b", "b_O", "b_out", "b_in", "b_Q", "b_K", "b_V")):
                parameter.normal_(0, 0.3)  # biases matter in the decompositions checked below
    return model


def _images(seed: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_from_pretrained_returns_an_eval_model_whose_config_follows_it(tmp_path):
    _model().save_pretrained(tmp_path)
    model = HookedViT.from_pretrained(tmp_path)
    assert not any(module.training for module in model.modules())
    assert model.cfg.device == torch.device("cpu") and model.cfg.dtype == torch.float32
    model.to(torch.float64)
    assert model.cfg.dtype == torch.float64
    assert model.cfg.n_key_value_heads is None and model.cfg.positional_embedding_type == "standard"
    assert "device" not in model.cfg.to_dict()


@pytest.mark.parametrize("ln_pre", [True, False])
def test_decompose_resid_sums_to_the_residual_stream(ln_pre):
    model = _model(ln_pre)
    _, cache = model.run_with_cache(_images(1))
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    components, labels = cache.decompose_resid(return_labels=True)
    torch.testing.assert_close(components.sum(0), final, atol=1e-5, rtol=0)
    assert labels[0] == "embed" and ("pos_embed" in labels) == (not ln_pre)
    full = cache.get_full_resid_decomposition(expand_neurons=False)
    torch.testing.assert_close(full.sum(0), final, atol=1e-5, rtol=0)


def test_accumulated_bias_is_the_sum_of_output_biases():
    model = _model()
    blocks = model.blocks
    expected = blocks[0].attn.b_O + blocks[0].mlp.b_out + blocks[1].attn.b_O + blocks[1].mlp.b_out + blocks[2].attn.b_O
    torch.testing.assert_close(model.accumulated_bias(2, mlp_input=True), expected)
    torch.testing.assert_close(model.accumulated_bias(1, include_mlp_biases=False), blocks[0].attn.b_O)
    with pytest.raises(ValueError, match="out of range"):
        model.accumulated_bias(3, mlp_input=True)


def test_attention_results_can_be_switched_on_after_loading():
    model = _model()
    images = _images(2)
    clean = model(images)
    model.set_use_attn_result(True)
    output, cache = model.run_with_cache(images)
    torch.testing.assert_close(output, clean, atol=1e-5, rtol=0)
    result = cache["blocks.1.attn.hook_result"]
    assert result.shape == (2, 5, 4, 32)
    attn_out = cache["blocks.1.hook_attn_out"]
    torch.testing.assert_close(result.sum(-2) + model.blocks[1].attn.b_O, attn_out, atol=1e-5, rtol=0)
    heads_of_two_layers = cache.stack_head_results(layer=2).sum(0)
    without_bias = [cache[f"blocks.{layer}.hook_attn_out"] - model.blocks[layer].attn.b_O for layer in (0, 1)]
    torch.testing.assert_close(heads_of_two_layers, without_bias[0] + without_bias[1], atol=1e-5, rtol=0)
    model.set_use_attn_result(False)
    assert "blocks.1.attn.hook_result" not in model.hook_dict


@pytest.mark.parametrize("switch, hooks", [
    ("set_use_split_qkv_input", ("hook_q_input", "hook_k_input", "hook_v_input")),
    ("set_use_attn_in", ("hook_attn_in",)),
    ("set_use_hook_mlp_in", ("hook_mlp_in",)),
])
def test_input_switches_add_hooks_that_change_nothing_until_edited(switch, hooks):
    model = _model()
    images = _images(3)
    clean = model(images)
    getattr(model, switch)(True)
    output, cache = model.run_with_cache(images)
    torch.testing.assert_close(output, clean, atol=1e-5, rtol=0)
    for hook in hooks:
        activation = cache[f"blocks.0.{hook}"]
        expected_shape = (2, 5, 32) if hook == "hook_mlp_in" else (2, 5, 4, 32)
        assert activation.shape == expected_shape
        resid = cache["blocks.0.hook_resid_mid" if hook == "hook_mlp_in" else "blocks.0.hook_resid_pre"]
        torch.testing.assert_close(activation, resid if hook == "hook_mlp_in" else resid[:, :, None].expand_as(activation))
        # An additive edit: LayerNorm would undo a rescaling of its input.
        edited = model.run_with_hooks(images, fwd_hooks=[(f"blocks.0.{hook}", lambda x, hook: x + torch.randn_like(x))])
        assert not torch.allclose(edited, clean, atol=1e-4), hook
    getattr(model, switch)(False)
    assert all(f"blocks.0.{hook}" not in model.hook_dict for hook in hooks)
    torch.testing.assert_close(model(images), clean)


def test_split_qkv_edits_one_head_of_one_input_only():
    model = _model()
    model.set_use_split_qkv_input(True)
    images = _images(4)

    def zero_head_two(x, hook):
        x = x.clone()
        x[:, :, 2] = 0
        return x

    _, cache = model.run_with_cache(images)
    with model.hooks(fwd_hooks=[("blocks.0.hook_k_input", zero_head_two)]):
        _, edited = model.run_with_cache(images)
    keys, edited_keys = cache["blocks.0.attn.hook_k"], edited["blocks.0.attn.hook_k"]
    torch.testing.assert_close(edited["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_q"])
    torch.testing.assert_close(edited_keys[:, :, [0, 1, 3]], keys[:, :, [0, 1, 3]])
    assert not torch.allclose(edited_keys[:, :, 2], keys[:, :, 2])


def test_switches_that_exclude_each_other_say_so():
    model = _model()
    model.set_use_split_qkv_input(True)
    with pytest.raises(ConfigError, match="exclude each other"):
        model.set_use_attn_in(True)


def test_remove_batch_dim_works_for_hooks_without_a_token_axis():
    model = _model()
    output, cache = model.run_with_cache(_images(5, n=1), remove_batch_dim=True)
    assert cache["hook_pooled"].shape == (32,) and cache["blocks.0.hook_resid_post"].shape == (5, 32)
    torch.testing.assert_close(cache["hook_output"], output[0])


def _logit_difference(output: torch.Tensor) -> torch.Tensor:
    return (output[:, 0] - output[:, 1]).mean()


def test_transformer_lens_head_patching_equals_ours():
    model = _model()
    clean, corrupted = _images(6), _images(7)
    _, clean_cache = model.run_with_cache(clean)
    theirs = tl_patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, _logit_difference)
    ours = patching.heads(model, clean, corrupted, _logit_difference, act="z")
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    theirs = tl_patching.get_act_patch_attn_head_pattern_all_pos(model, corrupted, clean_cache, _logit_difference)
    ours = patching.heads(model, clean, corrupted, _logit_difference, act="pattern")
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_transformer_lens_position_patching_works_through_index_df():
    # TransformerLens counts positions from the input's last dimension (for images, the width); an index_df
    # names the (layer, position) pairs instead.
    model = _model()
    clean, corrupted = _images(8), _images(9)
    _, clean_cache = model.run_with_cache(clean)
    pairs = itertools.product(range(model.cfg.n_layers), range(model.cfg.n_ctx))
    index_df = pd.DataFrame(list(pairs), columns=["layer", "pos"])
    theirs = tl_patching.generic_activation_patch(
        model, corrupted, clean_cache, _logit_difference, tl_patching.layer_pos_patch_setter, "resid_pre",
        index_df=index_df,
    )
    ours = patching.per_position(model, clean, corrupted, _logit_difference, act="resid_pre")
    torch.testing.assert_close(theirs, ours.flatten(), atol=1e-5, rtol=0)
    index_df = pd.DataFrame(
        list(itertools.product(range(model.cfg.n_layers), range(model.cfg.n_ctx), range(model.cfg.n_heads))),
        columns=["layer", "pos", "head"],
    )
    theirs = tl_patching.generic_activation_patch(
        model, corrupted, clean_cache, _logit_difference, tl_patching.layer_pos_head_vector_patch_setter, "z",
        index_df=index_df,
    )
    ours = patching.heads_by_position(model, clean, corrupted, _logit_difference, act="z")
    torch.testing.assert_close(theirs, ours.flatten(), atol=1e-5, rtol=0)
