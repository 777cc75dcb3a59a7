"""The newer transformers families (DINOv3, SigLIP 2 NaFlex, MetaCLIP 2, AIMv2) load exactly, and every hook
of every family fires once per forward and changes the output when edited."""

from __future__ import annotations

import pytest
import torch
import transformers

from vit_sae_hooks import SAE, HookedViT, SAEConfig
from vit_sae_hooks.errors import CheckpointFormatError, InputShapeError
from vit_sae_hooks.tokens import TokenSelection

from helpers import assert_every_hook_fires_once_and_matters, randomise_defaults

TOLERANCE = 1e-4
BASE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
            max_position_embeddings=8)


def _dinov3(**overrides):
    config = dict(BASE, hidden_size=48, intermediate_size=96, image_size=32, patch_size=8, num_register_tokens=2,
                  layerscale_value=0.5, use_gated_mlp=True, hidden_act="silu", key_bias=False)
    return transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(**{**config, **overrides}))


def _aimv2(**overrides):
    config = dict(BASE, image_size=32, patch_size=8, qkv_bias=True, mlp_bias=True)
    return transformers.Aimv2VisionModel(transformers.Aimv2VisionConfig(**{**config, **overrides}))


def _aimv2_dual():
    vision = dict(BASE, image_size=32, patch_size=8)
    config = transformers.Aimv2Config(vision_config=vision, text_config=TEXT, projection_dim=24)
    return transformers.Aimv2Model(config)


def _metaclip2():
    config = transformers.MetaClip2VisionConfig(**BASE, image_size=32, patch_size=8, projection_dim=24, hidden_act="gelu")
    return transformers.MetaClip2VisionModelWithProjection(config)


def _metaclip2_dual():
    vision = dict(BASE, image_size=32, patch_size=8)
    return transformers.MetaClip2Model(transformers.MetaClip2Config(vision_config=vision, text_config=TEXT, projection_dim=24))


def _siglip2():
    return transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**BASE, patch_size=4, num_patches=16))


def _pooled(model, x):
    return model(pixel_values=x).pooler_output


def _image_features(model, x):
    return model.get_image_features(pixel_values=x).pooler_output


# name -> (builder, HF's final output, image sizes to test: native first)
FAMILIES = {
    "dinov3_gated_registers": (_dinov3, _pooled, [(32, 32), (48, 24)]),
    "dinov3_plain": (
        lambda: _dinov3(use_gated_mlp=False, hidden_act="gelu", num_register_tokens=0), _pooled, [(32, 32), (24, 40)]
    ),
    "metaclip2_projection": (_metaclip2, lambda m, x: m(pixel_values=x).image_embeds, [(32, 32)]),
    "metaclip2_model": (_metaclip2_dual, _image_features, [(32, 32)]),
    "aimv2_biases": (_aimv2, _pooled, [(32, 32)]),
    "aimv2_no_biases": (lambda: _aimv2(qkv_bias=False, mlp_bias=False), _pooled, [(32, 32)]),
    "aimv2_native": (lambda: _aimv2(is_native=True), _pooled, [(32, 32), (48, 24)]),
    "aimv2_model": (_aimv2_dual, _image_features, [(32, 32)]),
    "siglip2_naflex": (_siglip2, None, [(16, 16), (32, 12), (8, 20)]),
}


def naflex(images: torch.Tensor, patch: int, max_patches: int | None = None):
    """What Siglip2ImageProcessor produces for already-resized, normalised images: patches in (row, column,
    channel) order, zero-padded to ``max_patches`` rows, with the mask and each image's patch grid."""
    batch, channels, height, width = images.shape
    rows, columns = height // patch, width // patch
    patches = images.reshape(batch, channels, rows, patch, columns, patch).permute(0, 2, 4, 3, 5, 1)
    patches = patches.reshape(batch, rows * columns, patch * patch * channels)
    length = max_patches or rows * columns
    padded = torch.zeros(batch, length, patches.shape[-1])
    padded[:, : rows * columns] = patches
    mask = torch.zeros(batch, length, dtype=torch.long)
    mask[:, : rows * columns] = 1
    return padded, mask, torch.tensor([[rows, columns]] * batch)


def _hf_forward(name, hf_model, images):
    if name.startswith("siglip2"):
        pixel_values, mask, shapes = naflex(images, hf_model.config.patch_size)
        out = hf_model(pixel_values=pixel_values, pixel_attention_mask=mask, spatial_shapes=shapes, output_hidden_states=True)
        return out.hidden_states, out.pooler_output
    tower = getattr(hf_model, "vision_model", hf_model)
    hidden_states = tower(pixel_values=images, output_hidden_states=True).hidden_states
    return hidden_states, FAMILIES[name][1](hf_model, images)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    models = {}
    for index, (name, (build, _, _)) in enumerate(FAMILIES.items()):
        torch.manual_seed(index)
        hf_model = randomise_defaults(build(), seed=index).eval()
        folder = tmp_path_factory.mktemp(name)
        hf_model.save_pretrained(folder)
        models[name] = (hf_model, folder)
    return models


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_block_and_the_output_match_transformers(name, saved):
    hf_model, folder = saved[name]
    model = HookedViT.from_pretrained(folder)
    for height, width in FAMILIES[name][2]:
        images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height * width))
        with torch.no_grad():
            hidden_states, expected = _hf_forward(name, hf_model, images)
        output, cache = model.run_with_cache(images, names_filter=lambda hook: hook.endswith("hook_resid_post"))
        assert len(hidden_states) == model.cfg.n_layers + 1
        for layer in range(model.cfg.n_layers):
            ours = cache[f"blocks.{layer}.hook_resid_post"]
            torch.testing.assert_close(ours, hidden_states[layer + 1], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(output, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_tokens_and_pooled_outputs_match_transformers(name, saved):
    # return_type="tokens" is the final-normalised sequence (last_hidden_state), "pooled" the tower's pooled
    # vector before any projection (pooler_output), at every tested size.
    hf_model, folder = saved[name]
    model = HookedViT.from_pretrained(folder)
    tower = getattr(hf_model, "vision_model", hf_model)
    for height, width in FAMILIES[name][2]:
        images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height + width))
        with torch.no_grad():
            if name.startswith("siglip2"):
                pixel_values, mask, shapes = naflex(images, hf_model.config.patch_size)
                expected = hf_model(pixel_values=pixel_values, pixel_attention_mask=mask, spatial_shapes=shapes)
            else:
                expected = tower(pixel_values=images)
            tokens, pooled = model(images, return_type="tokens"), model(images, return_type="pooled")
        final = expected.last_hidden_state
        if name.startswith("metaclip2"):
            # CLIP-style towers norm only the pooled CLS (last_hidden_state is the last block's raw output, checked
            # above); the final-normalised sequence is post_layernorm of it.
            with torch.no_grad():
                final = tower.post_layernorm(final)
        torch.testing.assert_close(tokens, final, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(pooled, expected.pooler_output, atol=TOLERANCE, rtol=0)


def test_siglip2_takes_the_processors_naflex_inputs_and_padding_changes_nothing(saved):
    hf_model, folder = saved["siglip2_naflex"]
    model = HookedViT.from_pretrained(folder)
    square, tall = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 32, 12)
    parts = [naflex(images, 4, max_patches=40) for images in (square, tall)]
    pixel_values, mask, shapes = (torch.cat(part) for part in zip(*parts, strict=True))
    with torch.no_grad():
        expected = hf_model(
            pixel_values=pixel_values, pixel_attention_mask=mask, spatial_shapes=shapes, output_hidden_states=True
        )
    output, cache = model.run_with_cache(pixel_values, pixel_attention_mask=mask, spatial_shapes=shapes)
    torch.testing.assert_close(output, expected.pooler_output, atol=TOLERANCE, rtol=0)
    for image, alone in enumerate((square, tall)):
        valid = int(mask[image].sum())
        ours = cache["blocks.1.hook_resid_post"][image, :valid]
        torch.testing.assert_close(ours, expected.hidden_states[2][image, :valid], atol=TOLERANCE, rtol=0)
        # A padded batch gives each image exactly what it gets alone.
        torch.testing.assert_close(output[image], model(alone)[0], atol=TOLERANCE, rtol=0)


def test_padding_belongs_to_no_token_set_and_is_never_spliced(saved):
    _, folder = saved["siglip2_naflex"]
    model = HookedViT.from_pretrained(folder)
    first, second = naflex(torch.randn(1, 3, 16, 16), 4, 40), naflex(torch.randn(1, 3, 8, 20), 4, 40)
    pixel_values, mask, shapes = (torch.cat(part) for part in zip(first, second, strict=True))
    model(pixel_values, pixel_attention_mask=mask, spatial_shapes=shapes)
    for spec in ("all", "patches", [0, 5, 39]):
        selection = TokenSelection.resolve(spec, 40, model.token_layout)
        assert not bool((selection.mask(2) & ~mask.bool()).any()), spec
    assert int(TokenSelection.resolve("all", 40, model.token_layout).mask(2).sum()) == 16 + 10
    sae = SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4, hook_name="blocks.0.hook_resid_post"))
    _, cache = model.run_with_cache(pixel_values, pixel_attention_mask=mask, spatial_shapes=shapes)
    with model.saes([sae]):
        _, spliced = model.run_with_cache(pixel_values, pixel_attention_mask=mask, spatial_shapes=shapes)
    padding = ~mask.bool()
    assert torch.equal(spliced["blocks.0.hook_resid_post"][padding], cache["blocks.0.hook_resid_post"][padding])
    assert not torch.equal(spliced["blocks.0.hook_resid_post"][~padding], cache["blocks.0.hook_resid_post"][~padding])


def test_evaluate_reads_padded_naflex_batches_and_counts_only_real_tokens(saved):
    # Two images of different shapes padded into one NaFlex batch score exactly as the two images alone, as
    # plain images: the padding is neither spliced nor counted. Cross-entropies go through a 3-class head.
    import torch.nn.functional as F

    from vit_sae_hooks.data.batches import limited_batches
    from vit_sae_hooks.errors import DataError
    from vit_sae_hooks.evals import evaluate
    from vit_sae_hooks.evals.heads import ZeroShotHead

    _, folder = saved["siglip2_naflex"]
    model = HookedViT.from_pretrained(folder)
    hook = "blocks.0.hook_resid_post"
    torch.manual_seed(3)
    sae = SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4, hook_name=hook))
    head = ZeroShotHead(torch.randn(3, model.cfg.d_out, generator=torch.Generator().manual_seed(4)))
    square, tall = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 32, 12)  # 16 and 24 patches
    parts = [naflex(images, 4, max_patches=30) for images in (square, tall)]
    pixel_values, mask, shapes = (torch.cat(part) for part in zip(*parts, strict=True))
    labels = torch.tensor([0, 2])
    batch = {"pixel_values": pixel_values, "pixel_attention_mask": mask, "spatial_shapes": shapes, "labels": labels}
    result = evaluate(model, sae, [batch], head=head, progress=False)
    xs, clean, spliced = [], [], []
    with torch.no_grad():
        for image in (square, tall):
            output, cache = model.run_with_cache(image, names_filter=[hook])
            xs.append(cache[hook][0])
            clean.append(output)
            spliced.append(model.run_with_saes(image, saes=[sae]))
        x = torch.cat(xs).double()
        x_hat = sae(x.float()).double()
    assert result.n_tokens == 16 + 24 and result.n_images == 2
    expected_ev = 100 * (1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert result.explained_variance_pct == pytest.approx(expected_ev, rel=1e-4)
    assert result.ce == pytest.approx(F.cross_entropy(head(torch.cat(clean)), labels).item(), rel=1e-5)
    assert result.recon_ce == pytest.approx(F.cross_entropy(head(torch.cat(spliced)), labels).item(), rel=1e-5)
    with pytest.raises(DataError, match="NaFlex inputs"):
        list(limited_batches([batch], None))


@pytest.mark.parametrize("name", ["dinov3_gated_registers", "dinov3_plain", "aimv2_model", "aimv2_native",
                                  "siglip2_naflex", "metaclip2_projection"])
def test_every_hook_fires_once_and_every_edit_changes_the_output(name, saved):
    model = HookedViT.from_pretrained(saved[name][1])
    height, width = FAMILIES[name][2][0]
    assert_every_hook_fires_once_and_matters(model, torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0)))


def test_rotary_models_hook_rotated_queries_and_have_no_position_table(saved):
    model = HookedViT.from_pretrained(saved["dinov3_gated_registers"][1])
    assert "hook_pos_embed" not in model.hook_dict and "blocks.0.attn.hook_rot_q" in model.hook_dict
    assert model.cfg.n_register_tokens == 2 and model.cfg.positional_embedding_type == "rotary"
    _, cache = model.run_with_cache(torch.randn(1, 3, 32, 32), names_filter=lambda n: n.startswith("blocks.0.attn.hook_"))
    prefix = model.cfg.n_prefix_tokens
    # CLS and registers are not rotated; patches are.
    torch.testing.assert_close(cache["blocks.0.attn.hook_rot_q"][:, :prefix], cache["blocks.0.attn.hook_q"][:, :prefix])
    assert not torch.allclose(cache["blocks.0.attn.hook_rot_q"][:, prefix:], cache["blocks.0.attn.hook_q"][:, prefix:])


def test_unknown_model_types_name_what_was_found_and_what_is_supported(tmp_path):
    config = transformers.BeitConfig(**BASE, image_size=32, patch_size=8)
    transformers.BeitModel(config).save_pretrained(tmp_path)
    with pytest.raises(CheckpointFormatError, match=r"model_type='beit' \(BeitModel\).*supported model types: .*dinov3_vit"):
        HookedViT.from_pretrained(tmp_path)


def test_naflex_inputs_are_checked(saved):
    model = HookedViT.from_pretrained(saved["siglip2_naflex"][1])
    pixel_values, mask, shapes = naflex(torch.randn(1, 3, 16, 16), 4, 20)
    with pytest.raises(InputShapeError, match="do not match pixel_attention_mask"):
        model(pixel_values, pixel_attention_mask=mask, spatial_shapes=torch.tensor([[2, 2]]))
    with pytest.raises(InputShapeError, match="need both"):
        model(pixel_values, pixel_attention_mask=mask)
    dino = HookedViT.from_pretrained(saved["dinov3_plain"][1])
    with pytest.raises(InputShapeError, match="SigLIP 2 NaFlex inputs"):
        dino(pixel_values, pixel_attention_mask=mask, spatial_shapes=shapes)


@pytest.mark.parametrize("name", ["dinov3_gated_registers", "aimv2_model", "siglip2_naflex", "metaclip2_model"])
def test_saes_splice_evaluate_and_train_on_every_family(name, saved):
    from vit_sae_hooks.evals import evaluate
    from vit_sae_hooks.training import ImageActivations, TrainConfig, train_sae

    model = HookedViT.from_pretrained(saved[name][1]).eval()
    height, width = FAMILIES[name][2][0]
    images = torch.randn(8, 3, height, width, generator=torch.Generator().manual_seed(5))
    hook = "blocks.0.hook_resid_post"  # an edit there reaches the pooled output through the last block
    tokens = "patches" if model.cfg.n_prefix_tokens else "all"
    data = ImageActivations(model, hook, list(images), token_set=tokens, images_per_block=8, batch_size=4)
    config = TrainConfig(k=4, d_sae=64, batch_size=16, tokens_budget=64, init_tokens=32, warmup_steps=0, log_every=1)
    sae = train_sae(data, config, progress=False)
    assert sae.hook_name == hook and sae.token_set == tokens
    clean = model(images)
    with torch.no_grad():
        spliced = model.run_with_saes(images, saes=[sae], use_error_term=True)
        replaced = model.run_with_saes(images, saes=[sae])
    torch.testing.assert_close(spliced, clean, atol=1e-5, rtol=0)
    assert not torch.allclose(replaced, clean)
    result = evaluate(model, sae, images, head=None, batch_size=4, progress=False)
    n_tokens = 8 * (model.cfg.n_ctx - model.cfg.n_prefix_tokens if tokens == "patches" else model.cfg.n_ctx)
    assert result.n_tokens == n_tokens and 0 < result.metrics["avg_l0"] <= 4


def test_heatmaps_of_a_padded_batch_equal_each_images_own(saved):
    from vit_sae_hooks.viz import feature_heatmap, patch_maps, token_activations

    model = HookedViT.from_pretrained(saved["siglip2_naflex"][1])
    sae = SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=8, hook_name="blocks.0.hook_resid_post"))
    wide, tall = torch.randn(1, 3, 8, 20), torch.randn(1, 3, 16, 12)
    first, second = naflex(wide, 4, 32), naflex(tall, 4, 32)
    pixel_values, mask, shapes = (torch.cat(part) for part in zip(first, second, strict=True))
    acts, positions = token_activations(model, sae, pixel_values, [5], pixel_attention_mask=mask, spatial_shapes=shapes)
    maps = patch_maps(acts, positions, 0, (4, 5), model.token_layout)
    alone_wide, alone_tall = feature_heatmap(model, sae, wide[0], 5), feature_heatmap(model, sae, tall[0], 5)
    assert alone_wide.shape == (2, 5) and alone_tall.shape == (4, 3)
    torch.testing.assert_close(maps[0, 0, :2, :5], alone_wide, atol=1e-5, rtol=0)
    torch.testing.assert_close(maps[1, 0, :4, :3], alone_tall, atol=1e-5, rtol=0)
    assert not maps[0, 0, 2:].any() and not maps[1, 0, :, 3:].any()


def test_training_reads_padded_naflex_items_and_only_their_real_tokens(saved):
    # Images of three aspect ratios, each one dict of the processor's padded output: the activations are each
    # image's own tokens run alone as a plain image, padding dropped; a stream block holds exactly those rows;
    # an SAE trains on them. Two hooks read in one pass stay aligned token by token.
    from vit_sae_hooks.training import ImageActivations, TrainConfig, train_sae

    model = HookedViT.from_pretrained(saved["siglip2_naflex"][1]).eval()
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
    images = [torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(i))
              for i, size in enumerate([(8, 20), (16, 12), (16, 16)])]  # 10, 12 and 16 patches
    items = []
    for image in images:
        pixel_values, mask, shapes = naflex(image, 4, max_patches=20)
        items.append({"pixel_values": pixel_values[0], "pixel_attention_mask": mask[0], "spatial_shapes": shapes[0]})
    data = ImageActivations(model, hooks, items, images_per_block=3, batch_size=2)
    expected = []
    with torch.no_grad():
        for image in images:
            _, cache = model.run_with_cache(image, names_filter=hooks)
            expected.append(torch.cat([cache[hook][0] for hook in hooks], -1))
    expected = torch.cat(expected)
    acts = data.activations(items)
    assert acts.shape == (10 + 12 + 16, 64)
    torch.testing.assert_close(acts, expected, atol=1e-5, rtol=0)
    block = data.stream(0, 1, seed=0).next_batch(38)  # one block of three images, shuffled
    assert torch.equal(block[block[:, 0].argsort()], acts[acts[:, 0].argsort()])

    # The real processor's output, split image by image: each image's rows are its unpadded patches run alone.
    from PIL import Image

    processor_class = getattr(transformers, "Siglip2ImageProcessorPil", transformers.Siglip2ImageProcessor)
    processor = processor_class(patch_size=4, max_num_patches=20)
    pixels = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(h))
              for h, w in [(40, 100), (80, 60)]]
    pictures = [Image.fromarray(array.numpy()) for array in pixels]
    processed = processor(images=pictures, return_tensors="pt")
    processed_items = [{key: value[i] for key, value in processed.items()} for i in range(len(pictures))]
    alone = []
    with torch.no_grad():
        for item in processed_items:
            n = int(item["pixel_attention_mask"].sum())
            _, cache = model.run_with_cache(item["pixel_values"][None, :n], names_filter=hooks[:1],
                                            pixel_attention_mask=torch.ones(1, n, dtype=torch.long),
                                            spatial_shapes=item["spatial_shapes"][None])
            alone.append(cache[hooks[0]][0])
    assert [part.shape[0] for part in alone] == [18, 20]  # the processor's grids 3 x 6 and 5 x 4
    processed_acts = ImageActivations(model, hooks[0], processed_items).activations(processed_items)
    torch.testing.assert_close(processed_acts, torch.cat(alone), atol=1e-5, rtol=0)

    single = ImageActivations(model, hooks[0], items, images_per_block=3, batch_size=3)
    config = TrainConfig(k=4, d_sae=64, batch_size=16, tokens_budget=64, init_tokens=32, warmup_steps=0, log_every=1)
    sae = train_sae(single, config, progress=False)
    assert sae.hook_name == hooks[0]

    with pytest.raises(InputShapeError, match=r"spatial_shapes \[2\].*'spatial_shapes': 'NoneType'"):
        data.activations([{"pixel_values": items[0]["pixel_values"], "pixel_attention_mask": items[0]["pixel_attention_mask"]}])
    longer = naflex(images[0], 4, max_patches=24)
    other = {"pixel_values": longer[0][0], "pixel_attention_mask": longer[1][0], "spatial_shapes": longer[2][0]}
    with pytest.raises(InputShapeError, match="padded to different lengths"):
        data.activations([items[0], other])
