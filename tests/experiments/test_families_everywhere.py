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
    # The fast sweep (encode once, re-run the blocks after the hook) agrees, transcoders included.
    fast = ablation_sweep(model, sae, images, features, metric, method="fast")
    torch.testing.assert_close(fast, effects, rtol=1e-4, atol=1e-4)


def test_the_fast_sweep_refuses_a_hook_it_cannot_restart_from(images):
    model = _model()
    sae = _sae("batchtopk")
    sae.cfg.hook_name = "blocks.1.hook_resid_mid"
    with pytest.raises(HookNameError, match="use method='naive'"):
        ablation_sweep(model, sae, images, [0], lambda logits: logits[:, 0].sum(), method="fast")


def test_attribution_patching_over_transcoder_features(images):
    model, sae = _model(), _sae("transcoder")
    clean, corrupted = images[:3], images[3:]
    def metric(logits):
        return logits[:, 1].sum()

    attribution = feature_attribution(model, sae, clean, corrupted, metric)
    assert attribution.scores.shape == (3, 10, 96)  # CLS + 3 x 3 patches
    torch.testing.assert_close(attribution.clean_acts, _encoded(model, sae, clean))
    torch.testing.assert_close(attribution.corrupted_acts, _encoded(model, sae, corrupted))
    # Each score is (clean - corrupted) x the metric's gradient at the corrupted feature values; check that
    # gradient by a central finite difference of the model run with the feature nudged, for the top entries.
    hook = f"{sae.output_hook_name}.hook_sae_acts_post"
    gradient = attribution.scores / (attribution.clean_acts - attribution.corrupted_acts)
    changed = (attribution.clean_acts - attribution.corrupted_acts).abs() > 1e-3
    for flat in (attribution.scores.abs() * changed).flatten().topk(3).indices.tolist():
        b, row, feature = (int(i) for i in torch.unravel_index(torch.tensor(flat), attribution.scores.shape))
        values = []
        for step in (1e-2, -1e-2):
            def nudge(acts, hook, step=step, b=b, row=row, feature=feature):
                acts = acts.clone()
                acts[b, row, feature] += step
                return acts
            with torch.no_grad():
                values.append(float(metric(model.run_with_saes(corrupted, saes=[sae], use_error_term=True,
                                                               fwd_hooks=[(hook, nudge)]))))
        assert float(gradient[b, row, feature]) == pytest.approx((values[0] - values[1]) / 2e-2, rel=1e-2, abs=1e-3)


def test_the_feature_browser_reads_a_transcoder(images, tmp_path):
    from vit_sae_hooks.viz import build_site

    model, sae = _model(), _sae("transcoder")
    site = build_site(model, sae, images, tmp_path / "site", top=2, similar=2, progress=False)
    assert (tmp_path / "site" / "index.html").is_file() and site.n_features == 96
    # The site's statistics are the transcoder's features at the hook it predicts, encoded from its input hook.
    from helpers.site import read_data

    summary = read_data(site.folder, "summary")
    acts = _encoded(model, sae, images)
    torch.testing.assert_close(torch.tensor(summary["max"], dtype=acts.dtype), acts.amax((0, 1)), rtol=1e-3, atol=1e-4)
    top = top_activating(model, sae, images, [int(acts.amax((0, 1)).argmax())], k=2, progress=False)
    assert top.image_indices[0].tolist() == acts[..., int(acts.amax((0, 1)).argmax())].amax(1).topk(2).indices.tolist()
