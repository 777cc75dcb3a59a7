"""The new SAE families work wherever an SAE does: top-activating images, the feature browser's data,
feature ablation sweeps and attribution patching, for transcoders (whose features live at the hook they
predict), BatchTopK, Matryoshka and gated SAEs."""

from __future__ import annotations

import pytest
import torch

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.errors import HookNameError
from vit_sae_hooks.experiments import ablate_features
from vit_sae_hooks.experiments.patching import ablation_sweep, feature_attribution
from vit_sae_hooks.viz import top_activating

CFG = HookedViTConfig(n_layers=3, d_model=32, n_heads=4, d_mlp=64, image_size=12, patch_size=4,
                      head_type="linear", d_output=5)
HOOK_IN, HOOK_OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
FAMILIES = {
    "transcoder": dict(architecture="topk", k=6, d_out=32, apply_b_dec_to_input=False, hook_name=HOOK_IN,
                       hook_name_out=HOOK_OUT, skip_connection=True),
    "batchtopk": dict(architecture="batchtopk", k=6, hook_name="blocks.1.hook_resid_post"),
    "matryoshka": dict(architecture="matryoshka", k=6, prefixes=(16, 96), hook_name="blocks.1.hook_resid_post"),
    "gated": dict(architecture="gated", hook_name="blocks.1.hook_resid_post"),
}


def _model() -> HookedViT:
    torch.manual_seed(0)
    return HookedViT(CFG).eval()


def _sae(name: str) -> SAE:
    torch.manual_seed(1)
    sae = SAE(SAEConfig(d_in=32, d_sae=96, **FAMILIES[name]))
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_(0, 0.3)
        if hasattr(sae, "buffer_names") and "threshold" in sae.buffer_names:
            sae.threshold.fill_(0.2)
    return sae


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(6, 3, 12, 12, generator=torch.Generator().manual_seed(5))


def _encoded(model, sae, images) -> torch.Tensor:
    _, cache = model.run_with_cache(images, names_filter=[sae.hook_name])
    with torch.no_grad():
        return sae.encode(cache[sae.hook_name])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_top_activating_images_are_the_encoded_maxima(images, name):
    model, sae = _model(), _sae(name)
    acts = _encoded(model, sae, images)
    features = [int(i) for i in acts.amax((0, 1)).topk(3).indices]
    top = top_activating(model, sae, images, features, k=2, progress=False)
    for column, feature in enumerate(features):
        expected = acts[..., feature].amax(1).topk(2).indices.tolist()
        assert top.image_indices[column].tolist() == expected


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_naive_ablation_sweep_equals_ablating_by_hand(images, name):
    model, sae = _model(), _sae(name)
    acts = _encoded(model, sae, images)
    features = [int(i) for i in acts.amax((0, 1)).topk(2).indices]

    def metric(logits):
        return logits[:, 0].sum()

    effects = ablation_sweep(model, sae, images, features, metric, method="naive")
    baseline = metric(model(images))
    hook = f"{sae.output_hook_name}.hook_sae_acts_post"
    for effect, feature in zip(effects, features, strict=True):
        with torch.no_grad():
            ablated = model.run_with_saes(images, saes=[sae], use_error_term=True,
                                          fwd_hooks=[(hook, ablate_features([feature]))])
        assert float(effect) == pytest.approx(float(metric(ablated) - baseline), rel=1e-4, abs=1e-5)
    if sae.is_transcoder:
        with pytest.raises(HookNameError, match="not a transcoder"):
            ablation_sweep(model, sae, images, features, metric, method="fast")


def test_attribution_patching_over_transcoder_features(images):
    model, sae = _model(), _sae("transcoder")
    clean, corrupted = images[:3], images[3:]
    attribution = feature_attribution(model, sae, clean, corrupted, lambda logits: logits[:, 1].sum())
    assert attribution.scores.shape == (3, 10, 96)  # CLS + 3 x 3 patches
    torch.testing.assert_close(attribution.clean_acts, _encoded(model, sae, clean))
    assert float(attribution.scores.abs().sum()) > 0


def test_the_feature_browser_reads_a_transcoder(images, tmp_path):
    from vit_sae_hooks.viz import build_site

    model, sae = _model(), _sae("transcoder")
    site = build_site(model, sae, images, tmp_path / "site", top=2, similar=2, progress=False)
    assert (tmp_path / "site" / "index.html").is_file() and site is not None
