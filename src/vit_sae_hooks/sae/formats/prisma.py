"""ViT-Prisma layout: ``weights.pt`` (or ``n_images_*.pt``) holding ``{"cfg", "state_dict"}``, plus ``config.json``.

The ``.pt`` pickles a ``VisionModelSAERunnerConfig``; it is read through :mod:`..safe_pickle`, which admits
that one class as a plain-data stand-in. The config comes from ``config.json`` when it sits next to the
weights (plain JSON, the same fields) and from the pickled object otherwise.

Mapping: ``hook_point_layer`` + ``layer_subtype`` -> ``blocks.{layer}.{subtype}``; ``cls_token_only`` ->
token set ``cls``, ``use_patches_only`` -> ``patches``; ``activation_fn_str`` ``relu`` -> standard, ``topk``
(+ ``activation_fn_kwargs.k``) -> TopK with ReLU; ``normalize_activations`` kept; ``b_dec`` always
subtracted from the input; ``model_name`` ``open-clip:<hub id>`` -> ``<hub id>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vit_sae_hooks.errors import CheckpointFormatError, ConfigError
from vit_sae_hooks.sae.config import SAEConfig
from vit_sae_hooks.sae.formats._io import (
    LoadedCheckpoint,
    build_config,
    checked_checkpoint,
    integer_entry,
    read_json,
    require,
)
from vit_sae_hooks.sae.safe_pickle import PRISMA_CONFIG_CLASS, PrismaConfigStandIn

CONFIG_FILE = "config.json"
_MODEL_NAME_PREFIXES = ("open-clip:", "open_clip:")


def matches(checkpoint: Any) -> bool:
    """Whether an unpickled ``.pt`` object has Prisma's layout (a state dict, with or without ``cfg``).

    Example:
        >>> matches({"cfg": None, "state_dict": {}})
        True
    """
    return isinstance(checkpoint, dict) and ("state_dict" in checkpoint or "W_enc" in checkpoint)


def read(weights_path: Path, checkpoint: dict[str, Any]) -> LoadedCheckpoint:
    """The Prisma SAE whose unpickled ``weights_path`` is ``checkpoint``.

    Example:
        >>> read(path, load_torch_checkpoint(path))  # path = Path("prisma_topk_none/weights.pt")
    """
    config_path = weights_path.parent / CONFIG_FILE
    if config_path.is_file():
        values, source = read_json(config_path), config_path
    elif isinstance(checkpoint.get("cfg"), PrismaConfigStandIn):
        values, source = checkpoint["cfg"].fields, weights_path
    else:
        raise CheckpointFormatError(
            f"{weights_path} has no pickled {PRISMA_CONFIG_CLASS} and there is no {CONFIG_FILE} next to it; "
            "download the repo's config.json into the same folder."
        )
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, dict):
        raise CheckpointFormatError(f"{weights_path}: 'state_dict' is a {type(state_dict).__name__}, expected a dict.")
    return checked_checkpoint(_config(values, source), dict(state_dict), weights_path)


def _config(values: dict[str, Any], path: Path) -> SAEConfig:
    for flag, meaning in (("is_transcoder", "transcoders"), ("hook_point_head_index", "per-head SAEs")):
        if values.get(flag):
            raise ConfigError(f"{path}: Prisma {meaning} ({flag}={values[flag]!r}) are not supported.")
    if values.get("architecture", "standard") != "standard":
        raise ConfigError(
            f"{path}: Prisma architecture {values['architecture']!r} is not supported; "
            "vit_sae_hooks loads 'standard' SAEs with a relu or topk activation."
        )
    d_in = integer_entry(values, "d_in", path)
    d_sae = values.get("d_sae")
    if d_sae is None:
        d_sae = d_in * integer_entry(values, "expansion_factor", path)
    activation = values.get("activation_fn_str", "relu")
    if activation == "relu":
        architecture, k = "standard", None
    elif activation == "topk":
        architecture, k = "topk", (values.get("activation_fn_kwargs") or {}).get("k")
    else:
        raise ConfigError(
            f"{path}: activation_fn_str {activation!r} is not supported; vit_sae_hooks loads 'relu' and 'topk'."
        )
    return build_config(
        path,
        d_in=d_in,
        d_sae=d_sae,
        architecture=architecture,
        k=k,
        apply_b_dec_to_input=True,
        normalize_activations=values.get("normalize_activations") or "none",
        hook_name=_hook_name(values, path),
        token_set=_token_set(values, path),
        model_name=_model_name(values.get("model_name")),
        dtype=str(values.get("_dtype") or values.get("dtype") or "float32"),
    )


def _hook_name(values: dict[str, Any], path: Path) -> str:
    if values.get("hook_point"):
        return str(values["hook_point"])
    layer = integer_entry(values, "hook_point_layer", path)
    subtype = str(require(values, "layer_subtype", path))
    return f"blocks.{layer}.{subtype}"


def _token_set(values: dict[str, Any], path: Path) -> str:
    cls_only, patches_only = bool(values.get("cls_token_only")), bool(values.get("use_patches_only"))
    if cls_only and patches_only:
        raise ConfigError(f"{path}: cls_token_only and use_patches_only are both set; a Prisma SAE uses one token set.")
    return "cls" if cls_only else "patches" if patches_only else "all"


def _model_name(name: Any) -> str | None:
    if not name:
        return None
    name = str(name)
    for prefix in _MODEL_NAME_PREFIXES:
        name = name.removeprefix(prefix)
    return name
