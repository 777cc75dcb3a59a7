"""Checkpoint loading for HookedViT: detect the format of a folder or hub id and convert it."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor

from vit_sae_hooks.errors import CheckpointFormatError
from vit_sae_hooks.files import read_json
from vit_sae_hooks.hub import resolve_local_or_hub
from vit_sae_hooks.model.config import HookedViTConfig
from vit_sae_hooks.model.loading.convert import load_tensors
from vit_sae_hooks.model.loading.hf import HF_WEIGHT_FILES, SUPPORTED_MODEL_TYPES, load_hf
from vit_sae_hooks.model.loading.open_clip import OPEN_CLIP_WEIGHT_FILES, load_open_clip
from vit_sae_hooks.model.loading.timm import TIMM_WEIGHT_FILES, load_timm

NATIVE_CONFIG = "hooked_vit_config.json"

SUPPORTED_FORMATS = (
    f"vit_sae_hooks ({NATIVE_CONFIG} + model.safetensors); "
    f"transformers (config.json with model_type in {sorted(SUPPORTED_MODEL_TYPES)} + {HF_WEIGHT_FILES[0]} or "
    f"{HF_WEIGHT_FILES[2]}); open_clip (open_clip_config.json + {' or '.join(OPEN_CLIP_WEIGHT_FILES)}); "
    "timm (config.json with 'architecture' + model.safetensors)"
)


def detect_format(folder: Path) -> tuple[str, dict]:
    """Name the checkpoint format of ``folder`` ("native", "timm", "open_clip", "hf") and return its parsed config."""
    if (folder / NATIVE_CONFIG).exists():
        return "native", read_json(folder / NATIVE_CONFIG)
    config = read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    if "architecture" in config:
        return "timm", config
    # Hub repos such as laion's publish both layouts; open_clip's is the original, so it wins
    # unless only the transformers weights are present.
    has_hf_weights = any((folder / name).exists() for name in HF_WEIGHT_FILES)
    has_open_clip_weights = any((folder / name).exists() for name in OPEN_CLIP_WEIGHT_FILES)
    if (folder / "open_clip_config.json").exists() and (has_open_clip_weights or not has_hf_weights):
        return "open_clip", read_json(folder / "open_clip_config.json")
    if "model_type" in config:
        return "hf", config
    found = sorted(p.name for p in folder.iterdir())
    raise CheckpointFormatError(
        f"cannot tell the checkpoint format of {folder}: found files {found}. Supported: {SUPPORTED_FORMATS}"
    )


def _fetch(name_or_path: str | os.PathLike, revision: str | None, cache_dir: str | os.PathLike | None) -> tuple[Path, str, dict]:
    local = Path(name_or_path).expanduser()
    if local.exists():
        folder = local if local.is_dir() else local.parent
        return (folder, *detect_format(folder))
    # Configs first, so only the weight files of the detected format are downloaded.
    folder = resolve_local_or_hub(name_or_path, ["*.json"], revision=revision, cache_dir=cache_dir)
    fmt, config = detect_format(folder)
    weights = {
        "native": ["model.safetensors"],
        "hf": list(HF_WEIGHT_FILES),
        "open_clip": list(OPEN_CLIP_WEIGHT_FILES),
        "timm": list(TIMM_WEIGHT_FILES),
    }[fmt]
    # Prefer safetensors; fall back to pickles (read with weights_only=True) only when absent.
    safetensors = [w for w in weights if w.endswith((".safetensors", ".safetensors.index.json"))]
    folder = resolve_local_or_hub(name_or_path, ["*.json", *safetensors], revision=revision, cache_dir=cache_dir)
    if not any((folder / w).exists() for w in safetensors):
        folder = resolve_local_or_hub(name_or_path, ["*.json", *weights], revision=revision, cache_dir=cache_dir)
    return folder, fmt, config


def load_checkpoint(
    name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> tuple[HookedViTConfig, dict[str, Tensor], str]:
    """Resolve ``name_or_path``, detect its format and return the HookedViT config, state dict, and the
    checkpoint's folder (for error messages)."""
    folder, fmt, config = _fetch(name_or_path, revision, cache_dir)
    origin = str(folder)
    if fmt == "native":
        cfg = HookedViTConfig.from_dict(config, source=folder / NATIVE_CONFIG)
        source = load_tensors(folder, ["model.safetensors"])
        return cfg, source.tensors, source.origin
    if fmt == "open_clip":
        if not Path(name_or_path).expanduser().exists():
            config = {**config, "hub_id": str(name_or_path)}
        return (*load_open_clip(folder, config), origin)
    if fmt == "timm":
        return (*load_timm(folder, config), origin)
    return (*load_hf(folder, config), origin)
