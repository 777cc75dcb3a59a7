"""Loading from the hub cache offline, and every broken checkpoint gives an error naming the file and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from vit_sae_hooks import HookedViT
from vit_sae_hooks.errors import CheckpointFormatError, ResolutionError
from vit_sae_hooks.hub import resolve_local_or_hub

from helpers import FIXTURES, make_hub_cache

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=8)


@pytest.fixture
def clip_folder(tmp_path) -> Path:
    torch.manual_seed(0)
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**SMALL)).save_pretrained(tmp_path / "clip")
    return tmp_path / "clip"


def test_hub_id_loads_offline_from_the_cache(tmp_path, clip_folder, offline):
    make_hub_cache(tmp_path / "cache", "acme/tiny-clip", {p.name: p for p in clip_folder.iterdir()})
    from_hub = HookedViT.from_pretrained("acme/tiny-clip", cache_dir=tmp_path / "cache")
    from_path = HookedViT.from_pretrained(clip_folder)
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(from_hub(images), from_path(images))


def test_open_clip_hub_layout_loads_offline(tmp_path, offline):
    folder = FIXTURES / "open_clip_tiny_gelu"
    make_hub_cache(tmp_path / "cache", "acme/tiny-open-clip", {p.name: p for p in folder.iterdir()})
    model = HookedViT.from_pretrained("acme/tiny-open-clip", cache_dir=tmp_path / "cache")
    assert model.cfg.model_name == "acme/tiny-open-clip"
    reference = load_file(folder / "reference.safetensors")
    torch.testing.assert_close(model(reference["pixel_values"]), reference["image_embeds"], atol=1e-4, rtol=0)


def test_hub_subfolders_resolve_offline(tmp_path, offline):
    source = tmp_path / "cfg.json"
    source.write_text("{}")
    make_hub_cache(tmp_path / "cache", "acme/saes", {"layer_9/cfg.json": source})
    folder = resolve_local_or_hub("acme/saes/layer_9", ["*.json"], cache_dir=tmp_path / "cache")
    assert (folder / "cfg.json").read_text() == "{}"


def test_unknown_hub_id_offline_says_what_to_do(tmp_path, offline):
    with pytest.raises(ResolutionError, match=r"not a local path.*Download it once while online"):
        HookedViT.from_pretrained("acme/never-downloaded", cache_dir=tmp_path / "cache")
    with pytest.raises(ResolutionError, match="not an existing local path and not a hub id"):
        HookedViT.from_pretrained("just-a-name")


def test_folder_without_a_known_layout_lists_files_and_formats(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(CheckpointFormatError, match=r"found files \['weights.npz'\].*open_clip_config.json"):
        HookedViT.from_pretrained(tmp_path)


def test_unsupported_transformers_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match=r"model_type='bert'.*'clip'.*'siglip'"):
        HookedViT.from_pretrained(tmp_path)


def test_missing_weight_file(clip_folder):
    (clip_folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointFormatError, match=r"none of the weight files.*found \['config\.json'\]"):
        HookedViT.from_pretrained(clip_folder)


def test_truncated_weights(clip_folder):
    weights = clip_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointFormatError, match=r"model\.safetensors.*corrupt, truncated"):
        HookedViT.from_pretrained(clip_folder)


def test_missing_tensor_is_named(clip_folder):
    weights = clip_folder / "model.safetensors"
    tensors = load_file(weights)
    (removed,) = [key for key in tensors if key.endswith("encoder.layers.1.mlp.fc2.weight")]
    del tensors[removed]
    save_file(tensors, weights)
    with pytest.raises(CheckpointFormatError, match=rf"no tensor '{removed}'"):
        HookedViT.from_pretrained(clip_folder)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_pickled_code_in_a_bin_checkpoint_is_never_run(tmp_path, clip_folder):
    marker = tmp_path / "marker.txt"
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(clip_folder / "config.json", folder / "config.json")
    torch.save({"vision_model.embeddings.class_embedding": torch.zeros(32), "x": _Exploit(marker)},
               folder / "pytorch_model.bin")
    with pytest.raises(CheckpointFormatError, match=r"pytorch_model\.bin"):
        HookedViT.from_pretrained(folder)
    assert not marker.exists()


def test_unknown_timm_architecture(tmp_path):
    folder = tmp_path / "timm"
    shutil.copytree(FIXTURES / "timm_vit_tiny_cls", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architecture": "resnet50"}))
    with pytest.raises(CheckpointFormatError, match=r"'resnet50' is not supported.*vit_<size>_patch"):
        HookedViT.from_pretrained(folder)


def test_open_clip_timm_trunk_is_refused_clearly(tmp_path):
    folder = tmp_path / "oc"
    shutil.copytree(FIXTURES / "open_clip_tiny_gelu", folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["timm_model_name"] = "convnext_base"
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointFormatError, match=r"timm_model_name.*not supported"):
        HookedViT.from_pretrained(folder)
