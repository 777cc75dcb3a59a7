"""ViT-Prisma layout: ``weights.pt`` (or ``n_images_*.pt``) holding ``{"cfg", "state_dict"}``, plus ``config.json``.

The ``.pt`` pickles a ``VisionModelSAERunnerConfig``; it is read through :mod:`..safe_pickle`, which admits
that one class as a plain-data stand-in. The config comes from ``config.json`` when it sits next to the
weights (plain JSON, the same fields) and from the pickled object otherwise.

Mapping: ``hook_point_layer`` + ``layer_subtype`` -> ``blocks.{layer}.{subtype}``; ``cls_token_only`` ->
token set ``cls``, ``use_patches_only`` -> ``patches``; ``activation_fn_str`` ``relu`` -> standard, ``topk``
(+ ``activation_fn_kwargs.k``) -> TopK with ReLU; ``architecture`` ``gated`` -> gated (``b_mag`` is the
magnitude bias; Prisma's unused ``b_enc`` is dropped); ``normalize_activations`` kept; ``b_dec`` subtracted
from the input; ``model_name`` ``open-clip:<hub id>`` -> ``<hub id>``.

Transcoders (``is_transcoder``): output hook ``blocks.{out_hook_point_layer}.{layer_out_subtype}``, ``d_out``,
``W_skip`` when ``transcoder_with_skip_connection``; the input pre-bias ``b_dec [d_in]`` folds into ``b_enc``
(``b_enc - b_dec @ W_enc``) and ``b_dec_out`` becomes the output bias ``b_dec``. Prisma adds the skip term of
the raw input before de-normalising, which is what :class:`~vit_sae_hooks.sae.Transcoder` computes.
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
    rename_magnitude_bias,
    require,
    tensor_entry,
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
    config = _config(values, source)
    return checked_checkpoint(config, _plain_tensors(config, dict(state_dict), weights_path), weights_path)


def _plain_tensors(config: SAEConfig, tensors: dict[str, Any], path: Path) -> dict[str, Any]:
    if config.architecture == "gated":
        return rename_magnitude_bias(tensors, path)
    if not config.is_transcoder:
        return tensors
    # Prisma's transcoder subtracts an input pre-bias b_dec [d_in] and adds the output bias b_dec_out [d_out];
    # the pre-bias folds exactly into the encoder bias.
    for name in ("W_enc", "b_enc", "b_dec", "b_dec_out"):
        tensor_entry(tensors, name, path)
    tensors = dict(tensors)
    pre_bias = tensors.pop("b_dec")
    if pre_bias.shape != tensors["W_enc"].shape[:1]:
        raise CheckpointFormatError(
            f"{path}: the transcoder's input pre-bias b_dec has shape {list(pre_bias.shape)}, but W_enc reads "
            f"{tensors['W_enc'].shape[0]} features; check that config.json belongs to these weights."
        )
    tensors["b_enc"] = tensors["b_enc"] - pre_bias.to(tensors["W_enc"].dtype) @ tensors["W_enc"]
    tensors["b_dec"] = tensors.pop("b_dec_out")
    return tensors


def _config(values: dict[str, Any], path: Path) -> SAEConfig:
    if values.get("hook_point_head_index") is not None:
        raise ConfigError(
            f"{path}: Prisma per-head SAEs (hook_point_head_index={values['hook_point_head_index']!r}) are not supported."
        )
    architecture = values.get("architecture", "standard")
    if architecture not in ("standard", "gated"):
        raise ConfigError(
            f"{path}: Prisma architecture {architecture!r} is not supported; vit_sae_hooks loads 'standard' SAEs "
            "and transcoders with a relu or topk activation, and 'gated' SAEs (Prisma has no model class for "
            f"{architecture!r} either)."
        )
    transcoder = bool(values.get("is_transcoder"))
    if transcoder and architecture != "standard":
        raise ConfigError(f"{path}: a Prisma transcoder with architecture {architecture!r} is not supported.")
    d_in = integer_entry(values, "d_in", path)
    d_sae = values.get("d_sae")
    if d_sae is None:
        d_sae = d_in * integer_entry(values, "expansion_factor", path)
    activation = values.get("activation_fn_str", "relu")
    if architecture == "gated" and activation != "relu":
        raise ConfigError(f"{path}: a Prisma gated SAE with activation_fn_str {activation!r} is not supported; use 'relu'.")
    k = None
    if architecture == "gated":
        pass
    elif activation == "relu":
        architecture = "standard"
    elif activation == "topk":
        architecture, k = "topk", (values.get("activation_fn_kwargs") or {}).get("k")
    else:
        raise ConfigError(
            f"{path}: activation_fn_str {activation!r} is not supported; vit_sae_hooks loads 'relu' and 'topk'."
        )
    transcoder_fields: dict[str, Any] = {}
    if transcoder:
        layer = integer_entry(values, "out_hook_point_layer", path)
        transcoder_fields = {
            "d_out": integer_entry(values, "d_out", path),
            "hook_name_out": f"blocks.{layer}.{require(values, 'layer_out_subtype', path)}",
            "skip_connection": bool(values.get("transcoder_with_skip_connection", True)),
        }
    return build_config(
        path,
        d_in=d_in,
        d_sae=d_sae,
        architecture=architecture,
        k=k,
        apply_b_dec_to_input=not transcoder,
        **transcoder_fields,
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
