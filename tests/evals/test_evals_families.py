"""evaluate() for transcoders (scored on the hook they predict) and Matryoshka SAEs (one row per prefix)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.evals import evaluate

N_CLASSES = 5
HOOK_IN, HOOK_OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


@pytest.fixture(scope="module")
def classifier() -> HookedViT:
    torch.manual_seed(0)
    cfg = HookedViTConfig(
        n_layers=3, d_model=16, n_heads=2, d_mlp=32, image_size=16, patch_size=8, ln_pre=True,
        head_type="linear", d_output=N_CLASSES, original_architecture="ViTForImageClassification",
    )
    return HookedViT(cfg).eval()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(7, 3, 16, 16, generator=generator), torch.randint(0, N_CLASSES, (7,), generator=generator)


def _mlp_transcoder(model: HookedViT) -> SAE:
    """A ReLU transcoder that *is* block 1's MLP (GELU replaced by nothing: W_in, then W_out), up to its ReLU."""
    mlp = model.blocks[1].mlp
    transcoder = SAE(SAEConfig(d_in=16, d_sae=32, d_out=16, apply_b_dec_to_input=False, hook_name=HOOK_IN,
                               hook_name_out=HOOK_OUT, dtype="float64"))
    with torch.no_grad():
        transcoder.W_enc.copy_(mlp.W_in.double())
        transcoder.b_enc.copy_(mlp.b_in.double())
        transcoder.W_dec.copy_(mlp.W_out.double())
        transcoder.b_dec.copy_(mlp.b_out.double())
    return transcoder


def test_a_transcoder_is_scored_on_the_hook_it_predicts(classifier, batch):
    images, labels = batch
    model = classifier.double()
    transcoder = _mlp_transcoder(model)
    result = evaluate(model, transcoder, images.double(), labels=labels, batch_size=3, progress=False)
    # By hand: the MLP output against the transcoder's prediction, and the model with the MLP replaced.
    _, cache = model.run_with_cache(images.double(), names_filter=[HOOK_IN, HOOK_OUT])
    x, y = cache[HOOK_IN].reshape(-1, 16), cache[HOOK_OUT].reshape(-1, 16)
    prediction = transcoder(x)
    explained = 1 - (y - prediction).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert result.explained_variance_pct == pytest.approx(100 * float(explained), rel=1e-9)
    assert result.hook_name == f"{HOOK_IN} -> {HOOK_OUT}"
    replaced = model.run_with_hooks(images.double(), fwd_hooks=[(HOOK_OUT, lambda act, hook: prediction.view_as(act))])
    zeroed = model.run_with_hooks(images.double(), fwd_hooks=[(HOOK_OUT, lambda act, hook: torch.zeros_like(act))])
    assert result.recon_ce == pytest.approx(float(F.cross_entropy(replaced, labels)), rel=1e-9)
    assert result.zero_abl_ce == pytest.approx(float(F.cross_entropy(zeroed, labels)), rel=1e-9)
    # ReLU stands in for GELU: close to the MLP, not equal to it.
    assert 50 < result.explained_variance_pct < 100
    # Spliced with the error term it changes nothing: the CE of the spliced model is the clean CE.
    with model.saes([transcoder], use_error_term=True):
        assert float(F.cross_entropy(model(images.double()), labels)) == pytest.approx(result.ce, rel=1e-9)
    classifier.float()


def test_matryoshka_results_per_prefix_equal_evaluating_each_prefix(classifier, batch):
    images, labels = batch
    torch.manual_seed(4)
    sae = SAE(SAEConfig(d_in=16, d_sae=64, architecture="matryoshka", k=6, prefixes=(8, 24, 64),
                        hook_name="blocks.1.hook_resid_post"))
    with torch.no_grad():
        sae.threshold.fill_(0.05)
    result = evaluate(classifier, sae, images, labels=labels, batch_size=4, progress=False, sae_name="m")
    assert sorted(result.by_prefix) == [8, 24]
    assert [row.sae_name for row in result.rows()] == ["m", "m[:8]", "m[:24]"]
    for width, row in result.by_prefix.items():
        alone = evaluate(classifier, sae.prefix_sae(width), images, labels=labels, batch_size=4, progress=False)
        for key in ("explained_variance", "avg_l0", "recon_ce", "ce_recovered_pct", "alive_features_pct"):
            assert row.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-6, abs=1e-9), key
    assert result.by_prefix[8].avg_l0 < result.avg_l0
    assert "by_prefix" in result.to_dict()


@pytest.mark.parametrize("architecture", ["batchtopk", "gated"])
def test_batchtopk_and_gated_saes_are_scored_as_by_hand(classifier, batch, architecture):
    images, labels = batch
    hook = "blocks.1.hook_resid_post"
    torch.manual_seed(5)
    sae = SAE(SAEConfig(d_in=16, d_sae=48, architecture=architecture, hook_name=hook,
                        **({"k": 6} if architecture == "batchtopk" else {})))
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_(0, 0.3)
        if "threshold" in sae.buffer_names:
            sae.threshold.fill_(0.2)  # BatchTopK's learned threshold, used at inference
    result = evaluate(classifier, sae, images, labels=labels, batch_size=3, progress=False)
    _, cache = classifier.run_with_cache(images, names_filter=[hook])
    x = cache[hook]
    with torch.no_grad():
        acts, reconstruction = sae.encode(x), sae(x)
    tokens, recon = x.reshape(-1, 16), reconstruction.reshape(-1, 16)
    explained = 1 - (tokens - recon).pow(2).sum() / (tokens - tokens.mean(0)).pow(2).sum()
    assert result.explained_variance_pct == pytest.approx(100 * float(explained), rel=1e-4)
    assert result.avg_l0 == pytest.approx(float((acts > 0).float().sum(-1).mean()), rel=1e-6)
    assert 0 < result.avg_l0 < 48
    with torch.no_grad():
        replaced = classifier.run_with_hooks(images, fwd_hooks=[(hook, lambda act, hook: sae(act))])
    assert result.recon_ce == pytest.approx(float(F.cross_entropy(replaced, labels)), rel=1e-5)
