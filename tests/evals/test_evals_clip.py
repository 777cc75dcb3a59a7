"""End to end on a tiny random HF CLIP: image folder → preprocessing → HookedViT → SAE → zero-shot head → metrics,
checked against transformers' own CLIPModel; then the same through ``vit-sae eval``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vit_sae_hooks import SAE, HookedViT, SAEConfig
from vit_sae_hooks.cli import main
from vit_sae_hooks.data import ImageFolder, preprocess_for
from vit_sae_hooks.errors import CheckpointFormatError, ConfigError
from vit_sae_hooks.evals import ZeroShotHead, build_zero_shot_head, evaluate

from helpers.clip import save_tiny_clip

Image = pytest.importorskip("PIL.Image")
transformers = pytest.importorskip("transformers")

CLASSES = ["cat", "dog", "eel"]
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIPModel with tokenizer and image processor saved as a hub checkpoint would be."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for index in range(3):
            size = (40 + 8 * index, 36 + 4 * label)
            Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(root / name / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory):
    torch.manual_seed(1)
    sae = SAE(SAEConfig(d_in=32, d_sae=128, hook_name=HOOK, token_set="all"))
    return sae.save(tmp_path_factory.mktemp("sae") / "sae")


def test_zero_shot_head_equals_clip_text_tower_and_round_trips(tiny_clip, tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    head = build_zero_shot_head(tiny_clip, CLASSES, templates=["a photo of a {}.", "art of the {}."], progress=False)
    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip)
    with torch.no_grad():
        expected = []
        for name in CLASSES:
            tokens = tokenizer([f"a photo of a {name}.", f"art of the {name}."], padding=True, return_tensors="pt")
            prompts = F.normalize(clip.get_text_features(**tokens).pooler_output, dim=-1)
            expected.append(F.normalize(prompts.mean(0), dim=-1))
    torch.testing.assert_close(head.text_embeddings, torch.stack(expected), atol=1e-5, rtol=0)
    assert head.logit_scale == pytest.approx(clip.logit_scale.exp().item())
    loaded = ZeroShotHead.load(head.save(tmp_path / "head.safetensors"))
    torch.testing.assert_close(loaded.text_embeddings, head.text_embeddings, atol=0, rtol=0)
    assert loaded.class_names == CLASSES and loaded.metadata["templates"] == ["a photo of a {}.", "art of the {}."]
    image_embeddings = torch.randn(2, 16)
    assert torch.allclose(ZeroShotHead.load(tmp_path / "head.safetensors", use_logit_scale=True)(image_embeddings),
                          loaded(image_embeddings) * head.logit_scale)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointFormatError, match="not a zero-shot head file"):
        ZeroShotHead.load(tmp_path / "junk.safetensors")
    with pytest.raises(ConfigError, match="does not exist"):
        ZeroShotHead.load(tmp_path / "missing.safetensors")


def test_evaluate_on_tiny_clip_matches_transformers(tiny_clip, image_folder, sae_folder):
    from transformers import CLIPModel

    model = HookedViT.from_pretrained(tiny_clip)
    sae = SAE.load(sae_folder)
    head = build_zero_shot_head(tiny_clip, CLASSES, templates="photo", progress=False)
    result = evaluate(model, sae, image_folder, head=head, batch_size=4, num_workers=0, progress=False)
    assert result.n_images == 9 and result.n_tokens == 9 * 17

    dataset = ImageFolder(image_folder, transform=preprocess_for(tiny_clip))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor(dataset.labels)
    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        embeddings = clip.get_image_features(pixel_values=images)
        embeddings = embeddings if isinstance(embeddings, torch.Tensor) else embeddings.pooler_output
        logits = F.normalize(embeddings, dim=-1) @ head.text_embeddings.T
    # No logit scale: cross-entropies stay near ln(3), as the published ones stay near ln(1000).
    assert result.ce == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)
    assert abs(result.ce - np.log(3)) < 0.2
    assert 0 < result.alive_features_pct <= 100 and result.avg_cls_l0 is not None
    limited = evaluate(model, sae, image_folder, head=head, limit=4, num_workers=0, progress=False)
    assert limited.n_images == 4


def test_cli_eval_prints_the_row_and_writes_json(tiny_clip, image_folder, sae_folder, tmp_path, capsys):
    head_file = tmp_path / "head.safetensors"
    out = tmp_path / "result.json"
    argv = ["eval", "--model", str(tiny_clip), "--sae", str(sae_folder), "--images", str(image_folder),
            "--head", f"zero-shot:{head_file}", "--build-head", "--classes", "folder", "--templates", "photo",
            "--batch-size", "4",
            "--num-workers", "0", "--limit", "6", "--json", str(out), "--compare-published", "--quiet"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| SAE | Hook | Tokens | % Explained var. | Avg L0 | Avg CLS L0 | Cos sim |")
    assert len(lines) == 3 and lines[2].startswith(f"| {sae_folder} | {HOOK} | all |")
    record = json.loads(out.read_text())
    assert record["n_images"] == 6 and record["metrics"]["ce"] is not None and "published" not in record
    assert head_file.exists()

    assert main([*argv[:2], str(tiny_clip), "--sweep", "--images", str(image_folder), "--quiet"]) == 2
    assert "no SAEs for model" in capsys.readouterr().err
    missing = ["eval", "--model", str(tiny_clip), "--sae", str(sae_folder), "--images", str(tmp_path / "nothing")]
    assert main(missing) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["siglip", "siglip2", "metaclip2"])
def test_zero_shot_heads_of_other_image_text_models_equal_their_text_towers_and_logits(tmp_path, kind):
    # SigLIP reads its text embedding at the last position, so prompts are padded to the tower's length as it
    # was trained; the head times the scale (plus SigLIP's bias) is the model's own logits_per_image.
    import transformers

    from helpers.clip import save_tiny_image_text_model

    folder = save_tiny_image_text_model(tmp_path / kind, kind)
    templates = ["a photo of a {}.", "{}"]
    head = build_zero_shot_head(folder, CLASSES, templates=templates, progress=False)
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    assert type(reference).__name__ == {"siglip": "SiglipModel", "siglip2": "Siglip2Model", "metaclip2": "MetaClip2Model"}[kind]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    sigmoid = kind != "metaclip2"
    padding = "max_length" if sigmoid else True

    def class_embeddings(padding):
        rows = []
        for name in CLASSES:
            tokens = tokenizer([t.format(name) for t in templates], padding=padding, truncation=True, max_length=24,
                               return_tensors="pt")
            features = reference.get_text_features(**tokens)
            features = features if isinstance(features, torch.Tensor) else features.pooler_output
            rows.append(F.normalize(F.normalize(features, dim=-1).mean(0), dim=-1))
        return torch.stack(rows)

    with torch.no_grad():
        expected = class_embeddings(padding)
        if sigmoid:
            assert not torch.allclose(class_embeddings(True), expected, atol=1e-3)  # the padding matters
    torch.testing.assert_close(head.text_embeddings, expected, atol=1e-5, rtol=0)
    assert head.logit_scale == pytest.approx(float(np.exp(2.3)), rel=1e-5)
    bias = head.metadata.get("logit_bias", 0.0)
    assert bias == (pytest.approx(-4.0) if sigmoid else 0.0)

    model = HookedViT.from_pretrained(folder)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = tokenizer([f"a photo of a {name}." for name in CLASSES], padding=padding, truncation=True,
                           max_length=24, return_tensors="pt")
        if kind == "siglip2":  # Siglip2 takes patches: (row, column, channel) order, with each image's mask and grid
            patches = images.reshape(2, 3, 4, 8, 4, 8).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 192)
            pixels = dict(pixel_values=patches, pixel_attention_mask=torch.ones(2, 16, dtype=torch.long),
                          spatial_shapes=torch.tensor([[4, 4], [4, 4]]))
        else:
            pixels = dict(pixel_values=images)
        hf = reference(**pixels, **tokens)
        single = build_zero_shot_head(folder, CLASSES, templates=["a photo of a {}."], progress=False)
        ours = single(model(images)) * single.logit_scale + bias
    torch.testing.assert_close(ours, hf.logits_per_image, atol=1e-4, rtol=1e-4)

    vision_only = tmp_path / "vision_only"
    reference.vision_model.save_pretrained(vision_only)
    tokenizer.save_pretrained(vision_only)
    with pytest.raises(CheckpointFormatError, match=r"is a \w+VisionConfig \(model_type '\w+'\), which has no text tower"):
        build_zero_shot_head(vision_only, CLASSES, templates=["{}"], progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointFormatError, match="is not a transformers image-text checkpoint") as error:
        build_zero_shot_head(tmp_path / "empty", CLASSES, templates=["{}"], progress=False)
    assert len(str(error.value)) < 700  # transformers' own message lists every model type; only its first line
