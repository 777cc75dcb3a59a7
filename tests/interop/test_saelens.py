"""Real SAELens next to this library: saves read identically both ways, in-memory conversion, and a
``sae_lens.SAE`` spliced into a HookedViT as it is.

SAELens needs TransformerLens < 4, so these run in the interop stage of ``.ci/run`` (its own venv:
``pip install -c constraints-cpu.txt -e ".[test]" sae-lens``), together with the rest of the suite.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.errors import ConfigError

sae_lens = pytest.importorskip("sae_lens", reason="the interop stage installs sae-lens (it needs transformer-lens<4)")

HOOK = "blocks.1.hook_resid_post"
ARCHITECTURES = {"standard": {}, "topk": {"k": 5}, "jumprelu": {}}
NORMALISATIONS = {
    "none": {}, "layer_norm": {}, "constant_norm_rescale": {}, "scaling_factor": {"scaling_factor": 0.37},
}


def _random(sae, seed: int):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sae.named_parameters():
            values = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            # Positive thresholds that let some latents through, as trained JumpReLU SAEs have.
            parameter.copy_(values.abs() * 0.5 if name == "threshold" else values)
    return sae


def _inputs(d_in: int = 16) -> torch.Tensor:
    return torch.randn(7, d_in, generator=torch.Generator().manual_seed(11)) * 3 + 1


def _same_features(ours: SAE, theirs, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "architecture, normalization, apply_b_dec",
    list(itertools.product(ARCHITECTURES, NORMALISATIONS, [True, False])),
)
def test_a_save_here_loads_in_saelens_with_the_same_features(tmp_path, architecture, normalization, apply_b_dec):
    config = SAEConfig(
        d_in=16, d_sae=48, architecture=architecture, **ARCHITECTURES[architecture], apply_b_dec_to_input=apply_b_dec,
        normalize_activations=normalization, **NORMALISATIONS[normalization], hook_name=HOOK,
    )
    ours = _random(SAE(config), seed=1)
    ours.save(tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    assert theirs.cfg.metadata.hook_name == HOOK
    _same_features(ours, theirs, _inputs())


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("normalization", ["none", "layer_norm", "constant_norm_rescale"])
def test_a_saelens_save_loads_here_with_the_same_features(tmp_path, architecture, normalization):
    values = {
        "architecture": architecture, "d_in": 16, "d_sae": 48, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": normalization, **ARCHITECTURES[architecture],
        "metadata": {"hook_name": HOOK, "model_name": "tiny"},
    }
    theirs = _random(sae_lens.SAE.from_dict(values), seed=2)
    theirs.save_model(str(tmp_path))
    ours = SAE.load(tmp_path)
    assert ours.hook_name == HOOK and ours.cfg.architecture == architecture
    _same_features(ours, theirs, _inputs())


def test_saelens_topk_rescaled_by_decoder_norm_loads_with_the_same_features(tmp_path):
    values = {"architecture": "topk", "d_in": 16, "d_sae": 48, "k": 5, "rescale_acts_by_decoder_norm": True,
              "metadata": {"hook_name": HOOK}}
    theirs = _random(sae_lens.SAE.from_dict(values), seed=3)
    theirs.save_model(str(tmp_path))
    ours = SAE.load(tmp_path)
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-4)


def test_conversion_in_memory_both_ways():
    ours = _random(SAE(SAEConfig(d_in=16, d_sae=48, architecture="topk", k=5, hook_name=HOOK)), seed=4)
    theirs = ours.to_saelens()
    assert isinstance(theirs, sae_lens.SAE)
    _same_features(ours, theirs, _inputs())
    back = SAE.from_saelens(theirs)
    assert back.cfg.architecture == "topk" and back.cfg.k == 5 and back.hook_name == HOOK
    _same_features(back, theirs, _inputs())


def test_what_saelens_cannot_represent_is_refused_unless_accepted(tmp_path):
    ours = _random(SAE(SAEConfig(d_in=16, d_sae=48, architecture="topk", k=5, topk_apply_relu=False)), seed=5)
    with pytest.raises(ConfigError, match="without ReLU"):
        ours.to_saelens()
    with pytest.raises(ConfigError, match="allow_lossy=True"):
        ours.save(tmp_path / "refused")
    ours.save(tmp_path / "lossy", allow_lossy=True)
    assert json.loads((tmp_path / "lossy" / "cfg.json").read_text())["metadata"]["vit_sae_hooks"]["topk_apply_relu"] is False
    reloaded = SAE.load(tmp_path / "lossy")
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode(x), ours.encode(x))


def _model_images_and_topk_pair():
    """A tiny model, two images, and a TopK SAE at HOOK as this library's object and as SAELens's."""
    torch.manual_seed(0)
    model = HookedViT(HookedViTConfig(n_layers=3, d_model=16, n_heads=4, d_mlp=32, image_size=16, patch_size=8)).eval()
    images = torch.randn(2, 3, 16, 16)
    ours = _random(SAE(SAEConfig(d_in=16, d_sae=48, architecture="topk", k=5, hook_name=HOOK)), seed=6)
    return model, images, ours, ours.to_saelens()


def test_a_saelens_sae_splices_into_a_hooked_vit_as_it_is():
    model, images, ours, theirs = _model_images_and_topk_pair()
    clean = model(images)
    with torch.no_grad():
        spliced_theirs = model.run_with_saes(images, saes=[theirs])
        spliced_ours = model.run_with_saes(images, saes=[ours])
        with_error = model.run_with_saes(images, saes=[theirs], use_error_term=True)
    torch.testing.assert_close(spliced_theirs, spliced_ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_error, clean, atol=1e-5, rtol=0)
    _, cache = model.run_with_cache_with_saes(images, saes=[theirs])
    assert cache[f"{HOOK}.hook_sae_acts_post"].shape == (2, 5, 48)
    assert not model.acts_to_saes


FAMILIES = {
    "batchtopk": dict(architecture="batchtopk", k=4),
    "matryoshka": dict(architecture="matryoshka", k=4, prefixes=(8, 24, 48)),
    "gated": dict(architecture="gated"),
    "transcoder": dict(architecture="standard", d_out=12, apply_b_dec_to_input=False, hook_name_out="blocks.1.hook_mlp_out"),
    "skip_transcoder": dict(architecture="standard", d_out=12, apply_b_dec_to_input=False, skip_connection=True,
                            hook_name_out="blocks.1.hook_mlp_out"),
    "jumprelu_skip_transcoder": dict(architecture="jumprelu", d_out=12, apply_b_dec_to_input=False,
                                     skip_connection=True, hook_name_out="blocks.1.hook_mlp_out"),
}


def _family(name: str) -> SAE:
    ours = _random(SAE(SAEConfig(d_in=16, d_sae=48, hook_name=HOOK, **FAMILIES[name])), seed=3)
    if hasattr(ours, "threshold") and not isinstance(ours.threshold, torch.nn.Parameter):
        ours.threshold.fill_(0.4)  # BatchTopK's buffer: one learned value for every latent
    return ours


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_new_families_saved_here_load_in_saelens_with_the_same_outputs(tmp_path, name):
    ours = _family(name)
    x = _inputs()
    ours.save(tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    _same_features(ours, theirs, x)
    if ours.is_transcoder:
        assert theirs.cfg.metadata.hook_name_out == ours.hook_name_out and theirs.cfg.d_out == 12
    if name in ("batchtopk", "matryoshka"):
        # What SAELens's own inference save writes: a JumpReLU naming its training architecture.
        assert type(theirs).__name__ == "JumpReLUSAE"
        assert theirs.cfg.metadata.training_architecture == {"batchtopk": "batchtopk"}.get(name, "matryoshka_batchtopk")
    # And back: SAELens's object converts to this library's class with the same outputs.
    again = SAE.from_saelens(theirs)
    assert type(again) is type(ours)
    with torch.no_grad():
        torch.testing.assert_close(again(x), ours(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_new_families_convert_in_memory(name):
    ours = _family(name)
    _same_features(ours, ours.to_saelens(), _inputs())


def test_saelens_saves_of_the_new_families_load_here(tmp_path):
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    config = BatchTopKTrainingSAEConfig(d_in=16, d_sae=48, k=4)
    config.metadata.hook_name = HOOK
    theirs = BatchTopKTrainingSAE(config)
    with torch.no_grad():
        theirs.W_dec.mul_(torch.rand(48, 1) + 0.5)
        theirs.b_enc.normal_()
        theirs.topk_threshold.fill_(0.3)
    theirs.save_inference_model(str(tmp_path / "inference"))
    x = _inputs()
    ours = SAE.load(tmp_path / "inference")
    assert type(ours).__name__ == "BatchTopKSAE" and ours.cfg.k == 4
    inference = sae_lens.SAE.load_from_disk(str(tmp_path / "inference"))
    _same_features(ours, inference, x)
    theirs.save_model(str(tmp_path / "training"))
    training_form = SAE.load(tmp_path / "training")
    with torch.no_grad():
        torch.testing.assert_close(training_form.encode_batch(x), theirs.encode(x), atol=1e-5, rtol=1e-5)


def test_a_saelens_transcoder_object_is_converted_not_spliced():
    tc = _family("skip_transcoder").to_saelens()
    model = HookedViT(HookedViTConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=12, image_size=8, patch_size=4))
    with pytest.raises(ConfigError, match=r"SAE\.from_saelens"):
        model.add_sae(tc)


@pytest.mark.parametrize("name", ["batchtopk", "matryoshka", "gated"])
@pytest.mark.parametrize("normalization", ["layer_norm", "constant_norm_rescale", "scaling_factor"])
def test_new_families_with_every_normalisation_load_in_saelens_with_the_same_outputs(tmp_path, name, normalization):
    ours = _random(SAE(SAEConfig(d_in=16, d_sae=48, hook_name=HOOK, normalize_activations=normalization,
                                 **NORMALISATIONS[normalization], **FAMILIES[name])), seed=3)
    if hasattr(ours, "threshold") and not isinstance(ours.threshold, torch.nn.Parameter):
        ours.threshold.fill_(0.4)
    ours.save(tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    _same_features(ours, theirs, _inputs())
    with torch.no_grad():
        torch.testing.assert_close(SAE.from_saelens(theirs)(_inputs()), ours(_inputs()), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("normalization", ["layer_norm", "constant_norm_rescale"])
def test_a_normalised_relu_transcoder_is_refused_unless_accepted(tmp_path, normalization):
    # SAELens's transcoders never de-normalise their prediction, so it would read this one differently.
    ours = _random(SAE(SAEConfig(d_in=16, d_sae=48, hook_name=HOOK, normalize_activations=normalization,
                                 **FAMILIES["transcoder"])), seed=3)
    with pytest.raises(ConfigError, match="de-normalises its prediction, which SAELens's transcoders do not"):
        ours.save(tmp_path / "refused")
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
    ours.save(tmp_path / "lossy", allow_lossy=True)
    assert sae_lens.SAE.load_from_disk(str(tmp_path / "lossy")).cfg.d_out == 12


def test_add_sae_and_the_saes_context_take_a_saelens_sae():
    model, images, ours, theirs = _model_images_and_topk_pair()
    with torch.no_grad():
        expected = model.run_with_saes(images, saes=[ours])
        model.add_sae(theirs)
        assert model.acts_to_saes[HOOK] is theirs
        torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=0)
        model.reset_saes()
        with model.saes([theirs]):
            torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=0)
    assert not model.acts_to_saes


def test_a_circuit_through_saelens_saes_equals_one_through_ours():
    from vit_sae_hooks.experiments import circuits

    torch.manual_seed(0)
    model = HookedViT(HookedViTConfig(n_layers=3, d_model=16, n_heads=4, d_mlp=32, image_size=16, patch_size=8,
                                      head_type="linear", d_output=4)).eval()
    images = torch.randn(3, 3, 16, 16)
    ours = [_random(SAE(SAEConfig(d_in=16, d_sae=32, architecture="topk", k=4, hook_name=f"blocks.{layer}.hook_resid_post")),
                    seed=layer) for layer in range(2)]

    def metric(out):
        return out[:, 1].mean()

    expected = circuits.feature_circuit(model, ours, images, metric, steps=8, top_nodes=4)
    found = circuits.feature_circuit(model, [sae.to_saelens() for sae in ours], images, metric, steps=8, top_nodes=4)
    for hook in expected.hooks:
        torch.testing.assert_close(found.node_attributions(hook), expected.node_attributions(hook), atol=1e-5, rtol=1e-4)
    assert [n.name for n in found.nodes] == [n.name for n in expected.nodes]
