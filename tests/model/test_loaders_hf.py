"""Every transformers vision family loads exactly: hooks equal HF hidden states, outputs equal HF outputs."""

from __future__ import annotations

import pytest
import torch
import transformers

from vit_sae_hooks import HookedViT

from helpers import randomise_defaults

TOLERANCE = 1e-4
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8)


def _clip_vision(**overrides):
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**{**SMALL, **overrides}))


def _clip_vision_projection():
    # gelu and an unusual eps prove both are read from the config, not assumed.
    return transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(**SMALL, projection_dim=24, hidden_act="gelu", layer_norm_eps=1e-3)
    )


def _clip_full():
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                max_position_embeddings=8)
    return transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=SMALL, projection_dim=24))


def _siglip_full():
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                max_position_embeddings=8)
    return transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=SMALL))


# name -> (builder, function giving HF's final output from (model, pixel_values))
FAMILIES = {
    "clip_vision_quickgelu": (lambda: _clip_vision(hidden_act="quick_gelu"), lambda m, x: m(pixel_values=x).pooler_output),
    "clip_vision_projection_gelu": (_clip_vision_projection, lambda m, x: m(pixel_values=x).image_embeds),
    "clip_model": (_clip_full, lambda m, x: m.get_image_features(pixel_values=x).pooler_output),
    "vit_model_pooler": (
        lambda: transformers.ViTModel(transformers.ViTConfig(**SMALL, layer_norm_eps=1e-6)),
        lambda m, x: m(pixel_values=x).pooler_output,
    ),
    "vit_classifier": (
        lambda: transformers.ViTForImageClassification(
            transformers.ViTConfig(**SMALL, id2label={i: f"class {i}" for i in range(7)})
        ),
        lambda m, x: m(pixel_values=x).logits,
    ),
    "dinov2": (
        lambda: transformers.Dinov2Model(transformers.Dinov2Config(**{**SMALL, "intermediate_size": None}, mlp_ratio=2)),
        lambda m, x: m(pixel_values=x).pooler_output,
    ),
    "dinov2_swiglu": (
        lambda: transformers.Dinov2Model(
            transformers.Dinov2Config(**{**SMALL, "intermediate_size": None}, mlp_ratio=2, use_swiglu_ffn=True)
        ),
        lambda m, x: m(pixel_values=x).pooler_output,
    ),
    "dinov2_registers": (
        lambda: transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(**{**SMALL, "intermediate_size": None}, mlp_ratio=2, num_register_tokens=3)
        ),
        lambda m, x: m(pixel_values=x).pooler_output,
    ),
    "siglip_vision": (
        lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SMALL)),
        lambda m, x: m(pixel_values=x).pooler_output,
    ),
    "siglip_model": (_siglip_full, lambda m, x: m.get_image_features(pixel_values=x).pooler_output),
}


def _vision_hidden_states(model, pixel_values, **kwargs):
    tower = getattr(model, "vision_model", model)
    return tower(pixel_values=pixel_values, output_hidden_states=True, **kwargs).hidden_states


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Each family built once with random LayerNorms and saved with ``save_pretrained``."""
    saved = {}
    for index, (name, (build, _)) in enumerate(FAMILIES.items()):
        torch.manual_seed(index)
        model = randomise_defaults(build(), seed=index).eval()
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        saved[name] = (model, folder)
    return saved


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hooks_and_output_match_transformers(family, saved_models, images):
    hf_model, folder = saved_models[family]
    model = HookedViT.from_pretrained(folder)
    output, cache = model.run_with_cache(images, names_filter=lambda name: name.endswith("hook_resid_post"))
    with torch.no_grad():
        hidden_states = _vision_hidden_states(hf_model, images)
        expected_output = FAMILIES[family][1](hf_model, images)
    assert len(hidden_states) == model.cfg.n_layers + 1
    for layer in range(model.cfg.n_layers):
        ours = cache[f"blocks.{layer}.hook_resid_post"]
        torch.testing.assert_close(ours, hidden_states[layer + 1], atol=TOLERANCE, rtol=0)
    assert output.shape == expected_output.shape
    torch.testing.assert_close(output, expected_output, atol=TOLERANCE, rtol=0)
    if family == "vit_classifier":  # the classifier's class names, in output order, from its id2label
        assert model.cfg.extra["class_names"] == [hf_model.config.id2label[i] for i in range(7)]


@pytest.mark.parametrize("family", ["dinov2", "dinov2_registers"])
def test_dinov2_interpolates_position_embeddings_like_transformers(family, saved_models):
    hf_model, folder = saved_models[family]
    model = HookedViT.from_pretrained(folder)
    for height, width in [(48, 40), (16, 24)]:  # up- and down-sampling, non-square
        images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            expected = FAMILIES[family][1](hf_model, images)
            hidden_states = _vision_hidden_states(hf_model, images)
        output, cache = model.run_with_cache(images, names_filter="blocks.2.hook_resid_post")
        torch.testing.assert_close(cache["blocks.2.hook_resid_post"], hidden_states[3], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(output, expected, atol=TOLERANCE, rtol=0)


def test_clip_interpolation_on_request_matches_transformers(saved_models):
    hf_model, folder = saved_models["clip_vision_quickgelu"]
    model = HookedViT.from_pretrained(folder)
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf_model(pixel_values=images, interpolate_pos_encoding=True).pooler_output
    torch.testing.assert_close(model(images, interpolate_pos_encoding=True), expected, atol=TOLERANCE, rtol=0)


def test_config_reads_activation_and_eps(saved_models):
    quick = HookedViT.from_pretrained(saved_models["clip_vision_quickgelu"][1]).cfg
    gelu = HookedViT.from_pretrained(saved_models["clip_vision_projection_gelu"][1]).cfg
    assert (quick.act_fn, quick.eps) == ("quick_gelu", 1e-5)
    assert (gelu.act_fn, gelu.eps, gelu.d_output) == ("gelu", 1e-3, 24)
    siglip = HookedViT.from_pretrained(saved_models["siglip_vision"][1]).cfg
    assert (siglip.has_cls_token, siglip.pool_type, siglip.act_fn) == (False, "map", "gelu_tanh")
    registers = HookedViT.from_pretrained(saved_models["dinov2_registers"][1]).cfg
    assert registers.n_register_tokens == 3 and registers.n_ctx == 1 + 3 + 16


def test_float16_and_bfloat16_loading_runs_close_to_float32(saved_models, images):
    folder = saved_models["clip_vision_quickgelu"][1]
    reference = HookedViT.from_pretrained(folder)(images)
    half = HookedViT.from_pretrained(folder, dtype=torch.bfloat16)(images.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference, atol=0.1, rtol=0.05)
