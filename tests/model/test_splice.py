"""Splicing SAEs into HookedViT: token sets, the error term, hook visibility, attach errors and no leaks."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.errors import ConfigError, HookNameError, InputShapeError
from vit_sae_hooks.experiments.interventions import set_features

CFG = HookedViTConfig(n_layers=3, d_model=32, n_heads=4, d_mlp=64, image_size=12, patch_size=4,
                      head_type="linear", d_output=5, n_register_tokens=1)
N_POS = 1 + 1 + 9  # CLS, one register, 3x3 patches


def _model() -> HookedViT:
    torch.manual_seed(0)
    return HookedViT(CFG).eval()


def _sae(hook: str = "blocks.1.hook_resid_post", token_set: str = "all", seed: int = 1, **overrides) -> SAE:
    torch.manual_seed(seed)
    cfg = dict(d_in=32, d_sae=64, architecture="topk", k=6, hook_name=hook, token_set=token_set,
               normalize_activations="layer_norm")
    sae = SAE(SAEConfig(**{**cfg, **overrides}))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))


def _clean_hook_value(model, images, hook):
    _, cache = model.run_with_cache(images, names_filter=[hook])
    return cache[hook]


def _selected(tokens) -> torch.Tensor:
    if isinstance(tokens, str):
        return {"all": torch.ones(N_POS, dtype=torch.bool), "cls": torch.arange(N_POS) == 0,
                "patches": torch.arange(N_POS) >= 2}[tokens]
    mask = torch.zeros(N_POS, dtype=torch.bool)
    mask[torch.as_tensor(tokens)] = True
    return mask


@pytest.mark.parametrize("tokens", ["all", "cls", "patches", [0, 5, 7], torch.arange(N_POS) % 3 == 0])
def test_splice_replaces_only_the_chosen_tokens(images, tokens):
    model, sae = _model(), _sae()
    hook = sae.hook_name
    x = _clean_hook_value(model, images, hook)
    mask = tokens if isinstance(tokens, torch.Tensor) else _selected(tokens)
    expected = torch.where(mask[None, :, None], sae(x), x)
    with model.saes([sae], tokens=tokens):
        spliced = _clean_hook_value(model, images, hook)
    torch.testing.assert_close(spliced, expected, atol=1e-5, rtol=1e-5)


def test_per_image_token_masks(images):
    model, sae = _model(), _sae()
    mask = torch.rand(2, N_POS, generator=torch.Generator().manual_seed(0)) > 0.5
    x = _clean_hook_value(model, images, sae.hook_name)
    with model.saes([sae], tokens=mask):
        spliced = _clean_hook_value(model, images, sae.hook_name)
    torch.testing.assert_close(spliced, torch.where(mask[..., None], sae(x), x), atol=1e-5, rtol=1e-5)


def test_token_set_defaults_to_the_sae_metadata(images):
    model, sae = _model(), _sae(token_set="cls")
    x = _clean_hook_value(model, images, sae.hook_name)
    with model.saes([sae]):
        _, cache = model.run_with_cache(images)
    assert cache[f"{sae.hook_name}.hook_sae_acts_post"].shape == (2, 1, 64)
    torch.testing.assert_close(cache[sae.hook_name][:, 1:], x[:, 1:])
    assert not torch.allclose(cache[sae.hook_name][:, 0], x[:, 0])


def test_error_term_keeps_the_output_and_edits_move_it_by_the_reconstruction_difference(images):
    model, sae = _model(), _sae()
    clean_output = model(images)
    x = _clean_hook_value(model, images, sae.hook_name)
    torch.testing.assert_close(model.run_with_saes(images, saes=[sae], use_error_term=True), clean_output, atol=1e-5, rtol=1e-5)
    acts_name = f"{sae.hook_name}.hook_sae_acts_post"
    with model.saes([sae], use_error_term=True), model.hooks(fwd_hooks=[(acts_name, set_features([3], 5.0))]):
        edited = _clean_hook_value(model, images, sae.hook_name)
    acts = sae.encode(x)
    acts_edited = acts.clone()
    acts_edited[..., 3] = 5.0
    stats = sae.norm_stats(x)
    expected_change = sae.decode(acts_edited, stats) - sae.decode(acts, stats)
    torch.testing.assert_close(edited - x, expected_change, atol=1e-5, rtol=1e-4)


def test_gradients_reach_feature_activations_with_the_error_term(images):
    model, sae = _model(), _sae()
    grads = {}
    acts_name = f"{sae.hook_name}.hook_sae_acts_post"
    with model.saes([sae], use_error_term=True):
        model.add_hook(acts_name, lambda grad, hook: grads.setdefault("acts", grad), dir="bwd")
        model(images)[:, 0].sum().backward()
    assert grads["acts"].shape == (2, N_POS, 64) and grads["acts"].abs().sum() > 0


def test_an_unedited_splice_with_the_error_term_leaves_the_model_gradients_unchanged(images):
    # With a hook on the features (so the error term is computed apart from them), d output / d input is the
    # model's own: the splice is the identity function, and its Jacobian is the identity too.
    model, sae = _model(), _sae()
    pixels = images.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(pixels)[:, 0].sum(), [pixels])
    with model.saes([sae], use_error_term=True):
        model.add_hook(f"{sae.hook_name}.hook_sae_acts_post", lambda acts, hook: acts * 1.0)
        (spliced,) = torch.autograd.grad(model(pixels)[:, 0].sum(), [pixels])
        model.reset_hooks()
    assert expected.abs().max() > 0
    torch.testing.assert_close(spliced, expected, atol=1e-5, rtol=1e-4)


def test_sae_hooks_are_visible_under_the_hook_name_and_the_original_hook_sees_the_splice(images):
    model, sae = _model(), _sae()
    seen = {}
    with model.saes([sae]):
        assert f"{sae.hook_name}.hook_sae_acts_post" in model.hook_dict
        model.run_with_hooks(images, fwd_hooks=[
            (sae.hook_name, lambda x, hook: seen.setdefault("out", x)),
            (f"{sae.hook_name}.hook_sae_output", lambda x, hook: seen.setdefault("sae_out", x)),
        ])
    torch.testing.assert_close(seen["out"], seen["sae_out"])
    assert set(sae.hook_dict) == {hp.name for hp in sae.hook_dict.values()}


def test_several_saes_and_tl_reset_hooks_keeps_them(images):
    model = _model()
    first, second = _sae("blocks.0.hook_mlp_out", seed=2), _sae("blocks.2.hook_resid_post", seed=3)
    model.add_sae(first)
    model.add_sae(second, use_error_term=True)
    model.reset_hooks()  # TransformerLens's reset must not drop splices
    _, cache = model.run_with_cache(images)
    assert "blocks.0.hook_mlp_out.hook_sae_recons" in cache.keys()
    assert "blocks.2.hook_resid_post.hook_sae_error" in cache.keys()
    model.reset_saes([second])
    assert list(model.acts_to_saes) == ["blocks.0.hook_mlp_out"]
    model.reset_saes()
    assert not model.acts_to_saes


def test_sae_on_flattened_attention_heads(images):
    model = _model()
    sae = _sae("blocks.1.attn.hook_z", d_in=32, normalize_activations="none")
    z = _clean_hook_value(model, images, "blocks.1.attn.hook_z")
    with model.saes([sae]):
        spliced = _clean_hook_value(model, images, "blocks.1.attn.hook_z")
    torch.testing.assert_close(spliced, sae(z.flatten(-2)).unflatten(-1, (4, 8)), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- errors
def test_attach_errors_are_explained():
    model = _model()
    with pytest.raises(InputShapeError, match=r"d_in=48.*'blocks\.1\.hook_resid_post' has 32"):
        model.add_sae(_sae(d_in=48))
    with pytest.raises(InputShapeError, match=r"d_in=32.*mlp\.hook_post' has 64"):
        model.add_sae(_sae(), hook_name="blocks.1.mlp.hook_post")
    with pytest.raises(HookNameError, match=r"Did you mean 'blocks\.2\.hook_resid_post'"):
        model.add_sae(_sae("blocks.3.hook_resid_post"))
    with pytest.raises(HookNameError, match="attention patterns"):
        model.add_sae(_sae(), hook_name="blocks.0.attn.hook_pattern")
    with pytest.raises(ConfigError, match="no hook_name"):
        model.add_sae(_sae(hook=None))
    with pytest.raises(ConfigError, match="no token axis"):
        model.add_sae(_sae(token_set="cls"), hook_name="hook_pooled")
    with pytest.raises(ConfigError, match="tokens='rows'"):
        model.add_sae(_sae(), tokens="rows")
    sae = _sae()
    model.add_sae(sae)
    with pytest.raises(ConfigError, match="already has an SAE attached"):
        model.add_sae(_sae())
    with pytest.raises(ConfigError, match="already attached"):
        model.add_sae(sae, hook_name="blocks.0.hook_resid_post")
    with pytest.raises(HookNameError, match=r"no SAE is attached at 'blocks\.0\.hook_resid_post'"):
        model.reset_saes(["blocks.0.hook_resid_post"])
    no_cls = HookedViT(HookedViTConfig(n_layers=1, d_model=32, n_heads=4, d_mlp=64, image_size=12, patch_size=4,
                                       has_cls_token=False, pool_type="mean"))
    with pytest.raises(ConfigError, match="needs a model with a CLS token"):
        no_cls.add_sae(_sae("blocks.0.hook_resid_post", token_set="cls"))


# ---------------------------------------------------------------------- nothing leaks
def _snapshot(model: HookedViT):
    return (
        sorted(model.hook_dict),
        [(name, id(module)) for name, module in model.named_modules()],
        sorted(model.state_dict()),
    )


def _assert_pristine(model, saes, snapshot, images, clean_output):
    assert _snapshot(model) == snapshot
    assert not model.acts_to_saes
    for hook_point in list(model.hook_dict.values()) + [hp for sae in saes for hp in sae.hook_dict.values()]:
        assert not hook_point._forward_hooks and not hook_point._backward_hooks and not hook_point.fwd_hooks
    for sae in saes:
        assert {hp.name for hp in sae.hook_dict.values()} == set(sae.hook_dict) and not sae.use_error_term
    torch.testing.assert_close(model(images), clean_output)


class Boom(Exception):
    pass


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["add", "reset_one", "reset_all", "context", "context_raises", "run_with_saes", "cache"]),
        st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
        st.booleans(),
        st.sampled_from([None, "all", "cls", "patches"]),
    ),
    max_size=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
def test_random_sequences_never_leak(operations, images):
    model = _model()
    saes = [_sae("blocks.0.hook_resid_post", seed=4), _sae("blocks.1.hook_mlp_out", seed=5),
            _sae("blocks.2.hook_resid_post", "cls", seed=6)]
    snapshot = _snapshot(model)
    clean_output = model(images)
    for operation, indices, error_term, tokens in operations:
        chosen = [saes[i] for i in indices]
        before = dict(model.acts_to_saes)
        if operation == "add":
            for sae in chosen:
                if sae.hook_name not in model.acts_to_saes:
                    model.add_sae(sae, use_error_term=error_term, tokens=tokens)
        elif operation == "reset_one":
            model.reset_saes([s for s in chosen if model.acts_to_saes.get(s.hook_name) is s])
        elif operation == "reset_all":
            model.reset_saes()
        else:
            free = [s for s in chosen if s.hook_name not in model.acts_to_saes]
            if operation == "run_with_saes":
                model.run_with_saes(images, saes=free, use_error_term=error_term, tokens=tokens)
            elif operation == "cache":
                model.run_with_cache_with_saes(images, saes=free, use_error_term=error_term, tokens=tokens)
            else:
                try:
                    with model.saes(free, use_error_term=error_term, tokens=tokens):
                        model.run_with_hooks(images, fwd_hooks=[("hook_pooled", lambda x, hook: x + 1)])
                        if operation == "context_raises":
                            raise Boom()
                except Boom:
                    pass
            assert model.acts_to_saes == before
    model.reset_saes()
    _assert_pristine(model, saes, snapshot, images, clean_output)


def test_exception_inside_run_with_saes_leaves_nothing(images):
    model = _model()
    saes = [_sae(), _sae("blocks.0.hook_resid_post", seed=9)]
    snapshot, clean = _snapshot(model), model(images)

    def explode(x, hook):
        raise Boom()

    with pytest.raises(Boom):
        model.run_with_saes(images, saes=saes, fwd_hooks=[("blocks.1.hook_resid_post.hook_sae_acts_post", explode)])
    _assert_pristine(model, saes, snapshot, images, clean)


def test_a_failed_attach_inside_a_context_detaches_the_earlier_ones(images):
    model = _model()
    good, bad = _sae(), _sae("blocks.0.hook_resid_post", d_in=48)
    snapshot, clean = _snapshot(model), model(images)
    with pytest.raises(InputShapeError), model.saes([good, bad]):
        pass
    _assert_pristine(model, [good], snapshot, images, clean)


def test_a_copied_sae_can_go_on_a_second_hook(images):
    model, sae = _model(), _sae()
    twin = copy.deepcopy(sae)
    with model.saes([sae]):
        model.add_sae(twin, hook_name="blocks.0.hook_resid_post")
        assert len(model.acts_to_saes) == 2
    model.reset_saes()


def test_splicing_on_the_compiled_kernels_still_honours_every_hook(images, monkeypatch):
    from vit_sae_hooks import kernels
    from vit_sae_hooks.kernels import compiled

    calls = []
    original = compiled.compiled_encode_forward
    monkeypatch.setattr(compiled, "compiled_encode_forward", lambda *a, **k: calls.append(1) or original(*a, **k))

    model, sae = _model(), _sae()
    names = [sae.hook_name, f"{sae.hook_name}.hook_sae_recons", f"{sae.hook_name}.hook_sae_output"]
    halve = [(f"{sae.hook_name}.hook_sae_recons", lambda recon, hook: recon * 0.5)]

    def run():
        with model.saes([sae]), model.hooks(fwd_hooks=halve):
            return model.run_with_cache(images, names_filter=names)

    eager_output, eager_cache = run()
    with kernels.use_backend("compile"):
        compiled_output, compiled_cache = run()
    assert calls, "the SAE did not take the compiled encode"
    for name in names:
        torch.testing.assert_close(compiled_cache[name], eager_cache[name], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled_output, eager_output, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="backend='fast' is unknown"), kernels.use_backend("fast"):
        pass


@pytest.mark.parametrize("where", [slice(None), slice(0, 1), slice(2, None), slice(1, 9, 3), torch.tensor([7, 0, 4])])
def test_take_and_put_rows_match_indexing(where):
    from vit_sae_hooks.tokens import put_rows, take_rows

    x = torch.randn(2, N_POS, 3)
    rows = take_rows(x, where)
    torch.testing.assert_close(rows, x[:, where])
    replacement = torch.randn_like(rows)
    expected = x.clone()
    expected[:, where] = replacement
    torch.testing.assert_close(put_rows(x, where, replacement), expected)
