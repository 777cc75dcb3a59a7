"""The SAE module's behaviour: hook points, feature editing, the error term, the sparse TopK path, config checks."""

from __future__ import annotations

import pytest
import torch

from vit_sae_hooks.errors import ConfigError, InputShapeError
from vit_sae_hooks.sae import SAE, SAEConfig
from vit_sae_hooks.sae import sae as sae_module

from helpers import FIXTURES

HOOK_NAMES = {
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
    "hook_sae_output",
}


def input_for(sae: SAE, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, sae.d_in, generator=torch.Generator().manual_seed(0))


@pytest.fixture(params=["saelens_standard", "saelens_topk", "saelens_jumprelu", "prisma_relu_layernorm"])
def sae(request: pytest.FixtureRequest) -> SAE:
    return SAE.load(FIXTURES / request.param)


def test_hook_points_have_saelens_names(sae: SAE) -> None:
    assert set(sae.hook_dict) == HOOK_NAMES


def test_run_with_cache_exposes_dense_features(sae: SAE) -> None:
    x = input_for(sae, 2, 5)
    with torch.no_grad():
        out, cache = sae.run_with_cache(x)
    assert cache["hook_sae_acts_post"].shape == (2, 5, sae.d_sae)
    assert cache["hook_sae_acts_pre"].shape == (2, 5, sae.d_sae)
    torch.testing.assert_close(cache["hook_sae_input"], x)
    torch.testing.assert_close(cache["hook_sae_output"], out)
    torch.testing.assert_close(cache["hook_sae_acts_post"], sae.encode(x))
    assert "hook_sae_error" not in cache, "the error hook only fires with use_error_term"


def test_ablating_a_feature_in_a_hook_changes_the_output_by_its_decoder_row(sae: SAE) -> None:
    x = input_for(sae, 6)
    with torch.no_grad():
        acts = sae.encode(x)
        feature = int(acts.sum(0).argmax())
        ablated = acts.clone()
        ablated[:, feature] = 0

        def ablate(values: torch.Tensor, hook) -> torch.Tensor:
            values = values.clone()
            values[..., feature] = 0
            return values

        edited = sae.run_with_hooks(x, fwd_hooks=[("hook_sae_acts_post", ablate)])
        torch.testing.assert_close(edited, sae.decode(ablated, sae.norm_stats(x)))
        assert not torch.allclose(edited, sae(x))


def test_error_term_makes_the_spliced_sae_an_identity_until_features_are_edited(sae: SAE) -> None:
    x = input_for(sae, 3, 4)
    with torch.no_grad():
        clean = sae(x)
        sae.use_error_term = True
        torch.testing.assert_close(sae(x), x, rtol=1e-5, atol=1e-5)
        _, cache = sae.run_with_cache(x)
        torch.testing.assert_close(cache["hook_sae_error"], x - clean)
        acts = sae.encode(x)
        feature = int(acts.flatten(0, 1).sum(0).argmax())
        zeroed = acts.clone()
        zeroed[..., feature] = 0

        def ablate(values: torch.Tensor, hook) -> torch.Tensor:
            values = values.clone()
            values[..., feature] = 0
            return values

        edited = sae.run_with_hooks(x, fwd_hooks=[("hook_sae_acts_post", ablate)])
        stats = sae.norm_stats(x)
        expected = x + sae.decode(zeroed, stats) - sae.decode(acts, stats)
        torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5)


def test_topk_forward_without_feature_hooks_never_builds_dense_activations(monkeypatch: pytest.MonkeyPatch) -> None:
    sae = SAE.load(FIXTURES / "saelens_topk")
    x = input_for(sae, 2, 7)
    with torch.no_grad():
        expected = sae(x)
    calls = []
    real_encode, real_decode = sae_module.kernels.encode_topk, sae_module.kernels.decode_topk
    monkeypatch.setattr(sae_module.kernels, "encode_topk", lambda *a, **k: calls.append("encode") or real_encode(*a, **k))
    monkeypatch.setattr(sae_module.kernels, "decode_topk", lambda *a, **k: calls.append("decode") or real_decode(*a, **k))

    def no_dense(*args, **kwargs):
        raise AssertionError("the dense activation path ran")

    monkeypatch.setattr(SAE, "_activations", no_dense)
    with torch.no_grad():
        torch.testing.assert_close(sae(x), expected)
        sae.run_with_hooks(x, fwd_hooks=[("hook_sae_recons", lambda t, hook: t)])
    assert calls == ["encode", "decode", "encode", "decode"]


def test_topk_hook_on_features_switches_to_the_dense_path() -> None:
    sae = SAE.load(FIXTURES / "saelens_topk")
    x = input_for(sae, 5)
    seen = []
    with torch.no_grad():
        out = sae.run_with_hooks(x, fwd_hooks=[("hook_sae_acts_post", lambda t, hook: seen.append(t.shape) or t)])
        torch.testing.assert_close(out, sae(x))
    assert seen == [torch.Size([5, sae.d_sae])]


def test_topk_sparse_path_is_differentiable() -> None:
    sae = SAE.load(FIXTURES / "sparsify_topk")
    x = input_for(sae, 4).requires_grad_()
    (sae(x) - x).pow(2).sum().backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        grad = getattr(sae, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert x.grad is not None


def test_decode_needs_stats_for_per_input_normalisation() -> None:
    sae = SAE.load(FIXTURES / "prisma_relu_layernorm")
    acts = sae.encode(input_for(sae, 3))
    with pytest.raises(ConfigError, match="norm_stats"):
        sae.decode(acts)


def test_decode_with_fixed_scaling_factor_needs_no_stats() -> None:
    config = SAEConfig(d_in=4, d_sae=8, normalize_activations="scaling_factor", scaling_factor=2.5)
    sae = SAE(config)
    x = input_for(sae, 3)
    with torch.no_grad():
        torch.testing.assert_close(sae.decode(sae.encode(x)), sae(x))


def test_encode_topk_is_only_for_topk_saes() -> None:
    sae = SAE.load(FIXTURES / "saelens_standard")
    with pytest.raises(ConfigError, match="encode_topk needs a topk SAE"):
        sae.encode_topk(input_for(sae, 2))


def test_metadata_is_exposed() -> None:
    sae = SAE.load(FIXTURES / "saelens_topk")
    assert (sae.hook_name, sae.token_set, sae.model_name) == ("blocks.3.hook_resid_post", "all", "tiny-vit")
    assert "k=8" in repr(sae)


def test_load_casts_to_requested_dtype() -> None:
    sae = SAE.load(FIXTURES / "saelens_jumprelu", dtype=torch.float64)
    assert {p.dtype for p in sae.parameters()} == {torch.float64}
    assert sae.cfg.dtype == "float64"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"d_in": 0, "d_sae": 8}, "d_in must be a positive integer"),
        ({"d_in": 4, "d_sae": 8, "architecture": "hyperbolic"}, "architecture 'hyperbolic' is not supported"),
        ({"d_in": 4, "d_sae": 8, "architecture": "topk"}, "needs an integer k"),
        ({"d_in": 4, "d_sae": 8, "architecture": "topk", "k": 9}, "1 <= k <= d_sae=8"),
        ({"d_in": 4, "d_sae": 8, "k": 2}, "only meaningful for architectures 'topk', 'batchtopk'"),
        ({"d_in": 4, "d_sae": 8, "normalize_activations": "batch_norm"}, "'batch_norm' is not supported"),
        ({"d_in": 4, "d_sae": 8, "normalize_activations": "scaling_factor"}, "finite positive scaling_factor"),
        ({"d_in": 4, "d_sae": 8, "scaling_factor": 2.0}, "set normalize_activations='scaling_factor'"),
        ({"d_in": 4, "d_sae": 8, "token_set": "registers"}, "token_set 'registers'"),
        ({"d_in": 4, "d_sae": 8, "dtype": "int8"}, "not a floating torch dtype"),
    ],
)
def test_invalid_configs_are_rejected(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SAEConfig(**fields)


def test_config_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ConfigError, match="unknown SAEConfig fields \\['hook'\\]"):
        SAEConfig.from_dict({"d_in": 4, "d_sae": 8, "hook": "blocks.1.hook_resid_post"})


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda sae: sae.encode(torch.randn(3, 63)), r"input has shape \(3, 63\).*needs \[\.\.\., 64\]"),
        (lambda sae: sae(torch.randn(63)), r"input has shape \(63,\)"),
        (lambda sae: sae.encode(torch.ones(3, 64, dtype=torch.int64)), "floating-point tensor"),
        (lambda sae: sae.decode(torch.randn(3, 64)), r"feature activations has shape \(3, 64\).*needs \[\.\.\., 256\]"),
        (lambda sae: sae.decode_topk(torch.randn(3, 8), torch.zeros(3, 7, dtype=torch.long)), "same shape"),
        (lambda sae: sae.decode_topk(torch.randn(3, 8), torch.zeros(3, 8)), "integer tensor"),
        (lambda sae: sae.encode(torch.tensor(1.0)), r"input has shape \(\)"),
    ],
)
def test_wrong_input_shapes_and_dtypes_raise_input_shape_error(call, message: str) -> None:
    sae = SAE.load(FIXTURES / "saelens_topk")
    with pytest.raises(InputShapeError, match=message):
        call(sae)
