"""Property tests: any leading shape and dtype, TopK picks the k largest pre-activations, sparse and dense
decode agree, and the module keeps no normalisation state between calls (re-entrancy)."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vit_sae_hooks.sae import SAE, SAEConfig

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def sae_configs(draw: st.DrawFn, architectures=("standard", "topk", "jumprelu")) -> SAEConfig:
    normalization = draw(st.sampled_from(["none", "layer_norm", "constant_norm_rescale", "scaling_factor"]))
    # The unbiased std of a single feature is undefined, so layer_norm needs d_in >= 2.
    d_in = draw(st.integers(min_value=2 if normalization == "layer_norm" else 1, max_value=12))
    d_sae = draw(st.integers(min_value=1, max_value=24))
    architecture = draw(st.sampled_from(architectures))
    return SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture=architecture,
        k=draw(st.integers(min_value=1, max_value=d_sae)) if architecture == "topk" else None,
        topk_apply_relu=draw(st.booleans()),
        apply_b_dec_to_input=draw(st.booleans()),
        normalize_activations=normalization,
        scaling_factor=draw(st.floats(0.1, 10.0)) if normalization == "scaling_factor" else None,
        dtype="float64",
    )


leading_shapes = st.lists(st.integers(min_value=1, max_value=4), min_size=0, max_size=3).map(tuple)


def random_sae(config: SAEConfig, seed: int) -> SAE:
    generator = torch.Generator().manual_seed(seed)
    sae = SAE(config)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return sae


def random_input(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(dtype)


def reference_forward(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature activations and reconstruction from the documented formulas, in float64, written independently."""
    cfg, p = sae.cfg, {name: value.detach().double() for name, value in sae.state_dict().items()}
    x = x.double()
    shift, scale = torch.zeros_like(x[..., :1]), torch.ones_like(x[..., :1])
    if cfg.normalize_activations == "layer_norm":
        shift = x.mean(-1, keepdim=True)
        std = (x - shift).std(-1, keepdim=True)
        x_in, scale = (x - shift) / (std + 1e-5), std
    elif cfg.normalize_activations == "constant_norm_rescale":
        factor = math.sqrt(cfg.d_in) / x.norm(dim=-1, keepdim=True)
        x_in, scale = x * factor, 1 / factor
    elif cfg.normalize_activations == "scaling_factor":
        x_in, scale = x * cfg.scaling_factor, torch.full_like(scale, 1 / cfg.scaling_factor)
    else:
        x_in = x
    if cfg.apply_b_dec_to_input:
        x_in = x_in - p["b_dec"]
    pre = x_in @ p["W_enc"] + p["b_enc"]
    if cfg.architecture == "standard":
        acts = pre.clamp(min=0)
    elif cfg.architecture == "jumprelu":
        acts = torch.where(pre > p["threshold"].clamp(min=0), pre.clamp(min=0), torch.zeros_like(pre))
    else:
        values, indices = pre.topk(cfg.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, indices, values.clamp(min=0) if cfg.topk_apply_relu else values)
    recon = (acts @ p["W_dec"] + p["b_dec"]) * scale + shift
    return acts, recon


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), rtol=1e-9, atol=1e-9)


@PROPERTY_SETTINGS
@given(config=sae_configs(), shape=leading_shapes, seed=st.integers(0, 2**16))
def test_encode_decode_any_leading_shape_match_float64_formulas(config: SAEConfig, shape, seed: int) -> None:
    sae = random_sae(config, seed)
    x = random_input((*shape, config.d_in), seed)
    expected_acts, expected_recon = reference_forward(sae, x)
    with torch.no_grad():
        acts = sae.encode(x)
        assert acts.shape == (*shape, config.d_sae)
        assert_close(acts, expected_acts)
        recon = sae.decode(acts, sae.norm_stats(x))
        assert recon.shape == x.shape
        assert_close(recon, expected_recon)
        assert_close(sae(x), expected_recon)


@PROPERTY_SETTINGS
@given(config=sae_configs(architectures=("topk",)), shape=leading_shapes, seed=st.integers(0, 2**16))
def test_topk_values_are_the_k_largest_pre_activations(config: SAEConfig, shape, seed: int) -> None:
    sae = random_sae(config, seed)
    x = random_input((*shape, config.d_in), seed)
    with torch.no_grad():
        _, cache = sae.run_with_cache(x, names_filter="hook_sae_acts_pre")
        pre = cache["hook_sae_acts_pre"]
        values, indices = sae.encode_topk(x)
    assert values.shape == indices.shape == (*shape, config.k)
    largest = pre.topk(config.k, dim=-1).values.sort(-1).values
    picked = pre.gather(-1, indices)
    assert_close(picked.sort(-1).values, largest)
    assert_close(values, picked.clamp(min=0) if config.topk_apply_relu else picked)
    assert (indices.sort(-1).values.diff(dim=-1) > 0).all(), "each latent is picked at most once"


@PROPERTY_SETTINGS
@given(config=sae_configs(architectures=("topk",)), shape=leading_shapes, seed=st.integers(0, 2**16))
def test_sparse_and_dense_decode_agree(config: SAEConfig, shape, seed: int) -> None:
    sae = random_sae(config, seed)
    x = random_input((*shape, config.d_in), seed)
    with torch.no_grad():
        stats = sae.norm_stats(x)
        values, indices = sae.encode_topk(x)
        dense = torch.zeros(*shape, config.d_sae, dtype=values.dtype).scatter(-1, indices, values)
        assert_close(sae.decode_topk(values, indices, stats), sae.decode(dense, stats))
        assert_close(sae.encode(x), dense)


@PROPERTY_SETTINGS
@given(
    config=sae_configs(),
    shape=leading_shapes,
    seed=st.integers(0, 2**16),
    sae_dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    input_dtype=st.sampled_from([torch.float16, torch.float32, torch.float64, torch.bfloat16]),
)
def test_any_dtype_computes_in_sae_dtype_and_returns_input_dtype(
    config: SAEConfig, shape, seed: int, sae_dtype: torch.dtype, input_dtype: torch.dtype
) -> None:
    sae = random_sae(config, seed).to(sae_dtype)
    x = random_input((*shape, config.d_in), seed, input_dtype)
    with torch.no_grad():
        out = sae(x)
        acts = sae.encode(x)
    assert out.dtype == input_dtype and out.shape == x.shape
    assert acts.dtype == sae_dtype and acts.shape == (*shape, config.d_sae)


@PROPERTY_SETTINGS
@given(config=sae_configs(), seed=st.integers(0, 2**16))
def test_no_normalisation_state_is_kept_between_calls(config: SAEConfig, seed: int) -> None:
    sae = random_sae(config, seed)
    first, second = random_input((3, config.d_in), seed), random_input((5, config.d_in), seed + 7) * 4 + 2
    attributes_before = set(vars(sae))
    with torch.no_grad():
        acts_first, stats_first = sae.encode(first), sae.norm_stats(first)
        sae.encode(second)  # an interleaved call on other data must not disturb the first decode
        interleaved = sae.decode(acts_first, stats_first)
        assert_close(interleaved, sae(first))
    assert set(vars(sae)) == attributes_before


def test_sae_called_inside_its_own_hook_still_reconstructs_correctly() -> None:
    config = SAEConfig(d_in=8, d_sae=16, normalize_activations="layer_norm", dtype="float64")
    sae = random_sae(config, seed=3)
    outer, inner = random_input((4, 8), 1), random_input((2, 8), 2) * 10 - 5
    expected = reference_forward(sae, outer)[1]
    inner_results: list[torch.Tensor] = []
    started = []

    def run_sae_on_other_input(acts: torch.Tensor, hook) -> torch.Tensor:
        if not started:  # run once; the nested call fires this hook again
            started.append(True)
            inner_results.append(sae(inner))
        return acts

    with torch.no_grad():
        out = sae.run_with_hooks(outer, fwd_hooks=[("hook_sae_acts_post", run_sae_on_other_input)])
    assert_close(out, expected)
    assert_close(inner_results[0], reference_forward(sae, inner)[1])
