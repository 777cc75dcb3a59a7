"""Splicing transcoders: the MLP output replaced by the prediction from the MLP input, the error term, token
sets, feature edits, and every misuse reported before anything is attached."""

from __future__ import annotations

import pytest
import torch

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.errors import ConfigError, HookNameError, InputShapeError
from vit_sae_hooks.experiments.interventions import set_features

CFG = HookedViTConfig(n_layers=3, d_model=32, n_heads=4, d_mlp=64, image_size=12, patch_size=4,
                      head_type="linear", d_output=5, n_register_tokens=1)
HOOK_IN, HOOK_OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


def _model() -> HookedViT:
    torch.manual_seed(0)
    return HookedViT(CFG).eval()


def _transcoder(architecture: str = "topk", skip: bool = True, **overrides) -> SAE:
    torch.manual_seed(3)
    fields = dict(d_in=32, d_sae=96, d_out=32, architecture=architecture, apply_b_dec_to_input=False,
                  hook_name=HOOK_IN, hook_name_out=HOOK_OUT, skip_connection=skip)
    if architecture == "topk":
        fields["k"] = 8
    transcoder = SAE(SAEConfig(**{**fields, **overrides}))
    with torch.no_grad():
        for parameter in transcoder.parameters():
            parameter.normal_(0, 0.2)
    return transcoder


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))


def _cache(model, images, *names):
    _, cache = model.run_with_cache(images, names_filter=list(names))
    return [cache[name] for name in names]


def _mlp_replaced(model, images, replacement):
    # The reference: the model with blocks.1's MLP output overwritten by hand.
    return model.run_with_hooks(images, fwd_hooks=[(HOOK_OUT, lambda act, hook: replacement)])


@pytest.mark.parametrize("architecture", ["topk", "standard", "jumprelu", "gated"])
def test_a_spliced_transcoder_replaces_the_mlp_output_by_its_prediction(images, architecture):
    model, transcoder = _model(), _transcoder(architecture)
    clean = model(images)
    (x,) = _cache(model, images, HOOK_IN)
    prediction = transcoder(x)
    assert type(transcoder).__name__.endswith("Transcoder") and transcoder.is_transcoder
    expected = _mlp_replaced(model, images, prediction)
    model.add_sae(transcoder)
    assert torch.allclose(model(images), expected, atol=1e-5)
    assert not torch.allclose(model(images), clean, atol=1e-3)
    _, cache = model.run_with_cache(images)
    assert torch.allclose(cache[HOOK_OUT], prediction, atol=1e-5)
    assert cache[f"{HOOK_OUT}.hook_sae_acts_post"].shape == (2, 11, 96)
    model.reset_saes()
    assert torch.equal(model(images), clean)
    assert not model.hook_dict[HOOK_IN].fwd_hooks and not model.hook_dict[HOOK_OUT].fwd_hooks


def test_with_the_error_term_the_model_is_unchanged_until_a_feature_is_edited(images):
    model, transcoder = _model(), _transcoder()
    clean = model(images)
    x, y = _cache(model, images, HOOK_IN, HOOK_OUT)
    # Zeroing one feature on the CLS token moves blocks.1's MLP output there by minus its activation times
    # its decoder direction, and nothing else.
    feature = int(transcoder.encode(x)[0, 0].argmax())
    moved = y.clone()
    moved[:, 0] -= transcoder.encode(x)[:, 0, feature, None] * transcoder.W_dec[feature]
    expected = _mlp_replaced(model, images, moved)
    model.add_sae(transcoder, use_error_term=True)
    assert torch.allclose(model(images), clean, atol=1e-5)
    hook = f"{HOOK_OUT}.hook_sae_acts_post"
    edited = model.run_with_hooks(images, fwd_hooks=[(hook, set_features([feature], 0.0, tokens=[0]))])
    assert torch.allclose(edited, expected, atol=1e-5)
    assert not torch.allclose(edited, clean, atol=1e-4)


@pytest.mark.parametrize("tokens", ["cls", "patches", [0, 4, 9]])
def test_token_sets_choose_which_outputs_are_predicted(images, tokens):
    model, transcoder = _model(), _transcoder()
    x, y = _cache(model, images, HOOK_IN, HOOK_OUT)
    if isinstance(tokens, str):
        selected = {"cls": torch.arange(11) == 0, "patches": torch.arange(11) >= 2}[tokens]
    else:
        selected = torch.zeros(11, dtype=torch.bool).index_fill_(0, torch.tensor(tokens), True)
    expected = torch.where(selected[None, :, None], transcoder(x), y)
    model.add_sae(transcoder, tokens=tokens)
    (spliced,) = _cache(model, images, HOOK_OUT)
    assert torch.allclose(spliced, expected, atol=1e-5)


def test_the_skip_term_is_part_of_the_prediction_and_not_of_decode(images):
    transcoder = _transcoder(skip=True)
    x = torch.randn(5, 32)
    acts = transcoder.encode(x)
    assert torch.allclose(transcoder(x), transcoder.decode(acts) + x @ transcoder.W_skip.T, atol=1e-5)
    with pytest.raises(ConfigError, match="true output minus its prediction"):
        transcoder.use_error_term = True
        transcoder(x)


def test_misuse_is_reported_before_anything_is_attached(images):
    model = _model()
    with pytest.raises(ConfigError, match=r"both are 'blocks\.1\.hook_mlp_out'"):
        model.add_sae(_transcoder(), hook_name_in=HOOK_OUT)
    with pytest.raises(ConfigError, match="must come before its output hook"):
        model.add_sae(_transcoder(), hook_name_in="blocks.2.ln2.hook_normalized")
    with pytest.raises(InputShapeError, match="token counts differ"):
        model.add_sae(_transcoder(), hook_name="hook_pooled")
    with pytest.raises(InputShapeError, match=r"exchanges=32 features but 'blocks\.1\.mlp\.hook_post' has 64"):
        model.add_sae(_transcoder(), hook_name="blocks.1.mlp.hook_post")
    with pytest.raises(ConfigError, match="hook_name_in is for transcoders"):
        model.add_sae(SAE(SAEConfig(d_in=32, d_sae=64, hook_name=HOOK_OUT)), hook_name_in=HOOK_IN)
    assert not model.acts_to_saes and all(not point.fwd_hooks for point in model.hook_dict.values())


def test_an_output_hook_that_runs_first_is_reported(images):
    # blocks.1.hook_resid_pre runs before blocks.1.ln2: no input has been read when the output hook fires.
    model = _model()
    model.add_sae(_transcoder(), hook_name="blocks.1.hook_resid_pre", hook_name_in=HOOK_IN)
    with pytest.raises(HookNameError, match="did not run before it"):
        model(images)


def test_transcoder_configs_name_their_mistakes():
    with pytest.raises(ConfigError, match="set apply_b_dec_to_input=False"):
        SAEConfig(d_in=8, d_sae=16, d_out=8)
    with pytest.raises(ConfigError, match=r"both 'blocks\.1\.hook_mlp_out'"):
        SAEConfig(d_in=8, d_sae=16, d_out=8, apply_b_dec_to_input=False, hook_name=HOOK_OUT, hook_name_out=HOOK_OUT)
    with pytest.raises(ConfigError, match="set d_out"):
        SAEConfig(d_in=8, d_sae=16, hook_name_out=HOOK_OUT)
