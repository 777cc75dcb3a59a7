"""Feature interventions, activation patching, attribution patching and ablation sweeps against naive references."""

from __future__ import annotations

import pytest
import torch

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.errors import ConfigError, HookNameError, InputShapeError
from vit_sae_hooks.experiments import patching
from vit_sae_hooks.experiments.interventions import (
    ablate_features,
    clamp_features,
    scale_features,
    set_features,
    steer,
)

# 12-pixel images cut into 4-pixel patches: 10 tokens, so any code reading the width (12) as the token count fails.
CFG = HookedViTConfig(n_layers=3, d_model=32, n_heads=4, d_mlp=64, image_size=12, patch_size=4, head_type="linear",
                      d_output=5)
N_POS = 10


@pytest.fixture
def model() -> HookedViT:
    torch.manual_seed(0)
    return HookedViT(CFG).eval()


def _sae(hook="blocks.1.hook_resid_post", token_set="all", normalize="layer_norm", seed=1, architecture="topk"):
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=32, d_sae=48, architecture=architecture, k=8 if architecture == "topk" else None,
                        hook_name=hook, token_set=token_set, normalize_activations=normalize))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
    return sae


@pytest.fixture
def pair():
    generator = torch.Generator().manual_seed(7)
    return torch.randn(2, 3, 12, 12, generator=generator), torch.randn(2, 3, 12, 12, generator=generator)


def metric(output: torch.Tensor) -> torch.Tensor:
    return (output[:, 0] - output[:, 1]).mean()


def _acts_with(model, sae, images, hook_fn, tokens=None):
    acts_name = f"{sae.hook_name}.hook_sae_acts_post"
    with model.saes([sae], tokens=tokens), model.hooks(fwd_hooks=[(acts_name, hook_fn)] if hook_fn else []):
        _, cache = model.run_with_cache(images, names_filter=[acts_name])
    return cache[acts_name]


@pytest.mark.parametrize(
    "hook_fn, expected",
    [
        (ablate_features([2, 5]), lambda a: a.index_fill(-1, torch.tensor([2, 5]), 0.0)),
        (ablate_features([2], mode="mean", mean=torch.arange(48.0)), lambda a: a.index_fill(-1, torch.tensor([2]), 2.0)),
        (ablate_features([4], mode="value", value=3.5), lambda a: a.index_fill(-1, torch.tensor([4]), 3.5)),
        (set_features([1, 9], -1.0), lambda a: a.index_fill(-1, torch.tensor([1, 9]), -1.0)),
        (scale_features([0, 3], 2.5), lambda a: torch.cat([a[..., :1] * 2.5, a[..., 1:3], a[..., 3:4] * 2.5, a[..., 4:]], -1)),
        (clamp_features(list(range(48)), maximum=0.1), lambda a: a.clamp(max=0.1)),
    ],
)
def test_feature_edits_on_all_tokens(model, pair, hook_fn, expected):
    sae = _sae()
    clean_acts = _acts_with(model, sae, pair[0], None)
    torch.testing.assert_close(_acts_with(model, sae, pair[0], hook_fn), expected(clean_acts))


@pytest.mark.parametrize("splice_tokens", ["all", "patches", [0, 3, 4]])
@pytest.mark.parametrize("edit_tokens", ["cls", "patches", [3, 8]])
def test_edits_hit_model_positions_whatever_tokens_the_sae_runs_on(model, pair, splice_tokens, edit_tokens):
    sae = _sae()
    named = {"all": list(range(N_POS)), "cls": [0], "patches": list(range(1, N_POS))}
    spliced = named[splice_tokens] if isinstance(splice_tokens, str) else splice_tokens
    wanted = named[edit_tokens] if isinstance(edit_tokens, str) else edit_tokens
    clean = _acts_with(model, sae, pair[0], None, tokens=splice_tokens)
    edited = _acts_with(model, sae, pair[0], set_features([7], 9.0, tokens=edit_tokens), tokens=splice_tokens)
    for row, position in enumerate(spliced):
        expected = torch.full_like(clean[:, row, 7], 9.0) if position in wanted else clean[:, row, 7]
        torch.testing.assert_close(edited[:, row, 7], expected)
        torch.testing.assert_close(edited[:, row, :7], clean[:, row, :7])


def test_steer_adds_the_decoder_direction_at_the_chosen_tokens(model, pair):
    sae = _sae()
    hook = sae.hook_name
    _, clean = model.run_with_cache(pair[0], names_filter=[hook])
    with model.hooks(fwd_hooks=[(hook, steer(sae, 11, alpha=4.0, tokens="patches"))]):
        _, steered = model.run_with_cache(pair[0], names_filter=[hook])
    expected = clean[hook].clone()
    expected[:, 1:] += 4.0 * sae.W_dec[11].detach()
    torch.testing.assert_close(steered[hook], expected)
    # With the SAE spliced and its error term on, steering still adds exactly the direction.
    with model.saes([sae], use_error_term=True), model.hooks(fwd_hooks=[(hook, steer(sae, 11, alpha=4.0))]):
        _, both = model.run_with_cache(pair[0], names_filter=[hook])
    torch.testing.assert_close(both[hook], clean[hook] + 4.0 * sae.W_dec[11].detach(), atol=1e-5, rtol=1e-5)


def test_intervention_errors():
    with pytest.raises(ConfigError, match="non-empty list"):
        ablate_features([])
    with pytest.raises(ConfigError, match="mode='mean' needs mean"):
        ablate_features([1], mode="mean")
    with pytest.raises(ConfigError, match="mode='median'"):
        ablate_features([1], mode="median")
    with pytest.raises(ConfigError, match="needs minimum, maximum"):
        clamp_features([1])
    with pytest.raises(ConfigError, match="out of range"):
        steer(_sae(), 48, 1.0)


def test_out_of_range_features_fail_when_run(model, pair):
    with pytest.raises(ConfigError, match=r"feature ids \[48\] are out of range for an SAE with 48 features"):
        _acts_with(model, _sae(), pair[0], ablate_features([48]))


# ---------------------------------------------------------------------- activation patching
def _naive_patch(model, clean, corrupted, name, index):
    _, cache = model.run_with_cache(clean, names_filter=[name])

    def hook(activation, hook):
        patched = activation.clone()
        patched[index] = cache[name][index]
        return patched

    return metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)]))


@pytest.mark.parametrize("act", patching.PER_POSITION_ACTS)
def test_per_position_patching_matches_the_naive_loop(model, pair, act):
    effects = patching.per_position(model, *pair, metric, act=act, max_batch=6)
    assert effects.shape == (3, N_POS)
    for layer, position in [(0, 0), (1, 4), (2, 9)]:
        naive = _naive_patch(model, *pair, f"blocks.{layer}.hook_{act}", (slice(None), position))
        torch.testing.assert_close(effects[layer, position], naive, atol=1e-5, rtol=1e-5)


def test_head_patching_matches_the_naive_loop(model, pair):
    effects = patching.heads(model, *pair, metric, layers=[0, 2])
    assert effects.shape == (2, 4)
    naive = _naive_patch(model, *pair, "blocks.2.attn.hook_z", (slice(None), slice(None), 3))
    torch.testing.assert_close(effects[1, 3], naive, atol=1e-5, rtol=1e-5)
    assert torch.allclose(patching.resid(model, *pair, metric)[0], patching.per_position(model, *pair, metric)[0])


@pytest.mark.parametrize("act", ["q", "k", "v", "pattern"])
def test_head_patching_of_queries_keys_values_and_patterns_matches_the_naive_loop(model, pair, act):
    effects = patching.heads(model, *pair, metric, act=act, layers=[1, 2])
    assert effects.shape == (2, 4)
    # Patterns are [batch, head, query, key]; queries, keys and values [batch, pos, head, d_head].
    index = (slice(None), 2) if act == "pattern" else (slice(None), slice(None), 2)
    naive = _naive_patch(model, *pair, f"blocks.1.attn.hook_{act}", index)
    torch.testing.assert_close(effects[0, 2], naive, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(effects, effects[0, 0].expand_as(effects))


@pytest.mark.parametrize("act", patching.PER_HEAD_POSITION_ACTS)
def test_head_by_position_patching_matches_the_naive_loop(model, pair, act):
    effects = patching.heads_by_position(model, *pair, metric, act=act, layers=[2])
    assert effects.shape == (1, N_POS, 4)
    for position, head in [(0, 1), (7, 3)]:
        naive = _naive_patch(model, *pair, f"blocks.2.attn.hook_{act}", (slice(None), position, head))
        torch.testing.assert_close(effects[0, position, head], naive, atol=1e-5, rtol=1e-5)


def test_patching_full_clean_run_recovers_the_clean_metric(model, pair):
    # Patching every position of resid_pre at layer 0 is the clean run.
    all_positions = patching.per_position(model, pair[0], pair[0], metric)
    torch.testing.assert_close(all_positions, torch.full_like(all_positions, metric(model(pair[0])).item()))


def test_patching_errors(model, pair):
    with pytest.raises(InputShapeError, match="same shape"):
        patching.resid(model, pair[0], pair[1][:1], metric)
    with pytest.raises(ConfigError, match="act='pattern'"):
        patching.per_position(model, *pair, metric, act="pattern")
    with pytest.raises(ConfigError, match="act='result'"):
        patching.heads(model, *pair, metric, act="result")


# ---------------------------------------------------------------------- attribution patching
def test_feature_attribution_gradients_match_finite_differences(model, pair):
    sae = _sae(normalize="none")
    attribution = patching.feature_attribution(model, sae, *pair, metric)
    assert attribution.scores.shape == (2, N_POS, 48)
    assert not any(p.grad is not None for p in model.parameters())
    acts_name = f"{sae.hook_name}.hook_sae_acts_post"
    gradient_estimate = torch.where(
        (attribution.clean_acts - attribution.corrupted_acts) != 0,
        attribution.scores / (attribution.clean_acts - attribution.corrupted_acts), 0.0,
    )
    epsilon = 1e-2
    for batch, row, feature in [(0, 0, 3), (1, 4, 10), (0, 9, 47)]:
        def bump(acts, hook, sign, batch=batch, row=row, feature=feature):
            acts = acts.clone()
            acts[batch, row, feature] += sign * epsilon
            return acts

        with torch.no_grad():
            up = metric(model.run_with_saes(pair[1], saes=[sae], use_error_term=True,
                                            fwd_hooks=[(acts_name, lambda a, hook: bump(a, hook, 1))]))
            down = metric(model.run_with_saes(pair[1], saes=[sae], use_error_term=True,
                                              fwd_hooks=[(acts_name, lambda a, hook: bump(a, hook, -1))]))
        finite_difference = (up - down) / (2 * epsilon)
        if attribution.clean_acts[batch, row, feature] != attribution.corrupted_acts[batch, row, feature]:
            torch.testing.assert_close(gradient_estimate[batch, row, feature], finite_difference, atol=2e-3, rtol=2e-2)
    assert len(attribution.top(3)) == 3


# ---------------------------------------------------------------------- ablation sweep
@pytest.mark.parametrize(
    "hook, tokens, normalize, architecture",
    [
        ("blocks.1.hook_resid_post", None, "layer_norm", "topk"),
        ("blocks.0.hook_mlp_out", "patches", "constant_norm_rescale", "standard"),
        ("blocks.2.hook_resid_pre", "cls", "none", "topk"),
        # At the last block only the CLS token reaches the pooled output, so the set includes it.
        ("blocks.2.hook_resid_post", [0, 2, 9], "layer_norm", "standard"),
    ],
)
def test_fast_ablation_sweep_matches_the_naive_loop(model, pair, hook, tokens, normalize, architecture):
    sae = _sae(hook, normalize=normalize, architecture=architecture)
    features = list(range(0, 48, 3))
    fast = patching.ablation_sweep(model, sae, pair[0], features, metric, tokens=tokens, method="fast", max_batch=10)
    naive = patching.ablation_sweep(model, sae, pair[0], features, metric, tokens=tokens, method="naive")
    assert fast.shape == (len(features),) and naive.abs().max() > 0
    torch.testing.assert_close(fast, naive, atol=1e-4, rtol=1e-4)


def test_ablation_sweep_at_other_hooks_falls_back_to_the_naive_loop(model, pair):
    sae = _sae("blocks.1.hook_attn_out")
    auto = patching.ablation_sweep(model, sae, pair[0], [0, 1, 2], metric)
    naive = patching.ablation_sweep(model, sae, pair[0], [0, 1, 2], metric, method="naive")
    torch.testing.assert_close(auto, naive)
    with pytest.raises(HookNameError, match="method='naive'"):
        patching.ablation_sweep(model, sae, pair[0], [0], metric, method="fast")
    with pytest.raises(ConfigError, match="features is empty"):
        patching.ablation_sweep(model, sae, pair[0], [], metric)
