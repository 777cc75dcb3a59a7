"""SAELens layout, read and written: ``cfg.json`` + ``sae_weights.safetensors``.

This is also the layout :meth:`SAE.save` writes, so SAELens-based tooling can read our SAEs. Fields
SAELens has no slot for (token set, ReLU-less TopK, a fixed scaling factor) go under
``metadata.vit_sae_hooks``, which SAELens keeps as opaque metadata and this reader restores exactly.

Read: SAELens 6 (``metadata.hook_name``) and earlier configs (``hook_name`` / ``hook_point`` at top level,
``activation_fn_str`` + ``activation_fn_kwargs.k`` for TopK, boolean ``normalize_activations``), the
``standard``, ``topk`` and ``jumprelu`` architectures, ``rescale_acts_by_decoder_norm`` and the legacy
``finetuning_scaling_factor`` and ``log_threshold`` parameters (all folded into the plain weights).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from vit_sae_hooks.errors import CheckpointFormatError, ConfigError
from vit_sae_hooks.sae.config import SAEConfig
from vit_sae_hooks.sae.formats._io import (
    LoadedCheckpoint,
    build_config,
    checked_checkpoint,
    has_files,
    integer_entry,
    read_json,
    read_safetensors,
)
from vit_sae_hooks.sae.registry import all_architecture_classes, architecture_class

logger = logging.getLogger(__name__)

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
EXTENSION_KEY = "vit_sae_hooks"
# The SAELens release whose config layout `write` produces (metadata block, `architecture` key).
WRITTEN_SAELENS_LAYOUT = "6.0.0"

def matches(folder: Path) -> bool:
    """Whether ``folder`` holds a SAELens-layout SAE.

    Example:
        >>> matches(Path("tests/fixtures/saelens_topk"))
        True
    """
    return has_files(folder, CONFIG_FILE, WEIGHTS_FILE)


def read(folder: Path) -> LoadedCheckpoint:
    """The SAE in ``folder`` (``cfg.json`` + ``sae_weights.safetensors``), weights folded to plain form.

    Example:
        >>> checkpoint = read(Path("tests/fixtures/saelens_topk"))
    """
    config_path = folder / CONFIG_FILE
    values = read_json(config_path)
    tensors = read_safetensors(folder / WEIGHTS_FILE)
    metadata = values.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise CheckpointFormatError(f"{config_path}: 'metadata' is {metadata!r}, expected an object.")
    extension = metadata.get(EXTENSION_KEY) or {}

    architecture = _architecture(values, config_path)
    own = architecture_class(architecture)
    if values.get("reshape_activations", "none") not in ("none", None) or values.get("hook_head_index") is not None:
        raise ConfigError(
            f"{config_path}: per-head (hook_z) SAEs are not supported by vit_sae_hooks; "
            "use an SAE trained on a full hook such as 'blocks.L.hook_resid_post'."
        )
    normalization = _normalization(values.get("normalize_activations", "none"), extension, config_path)
    config = build_config(
        config_path,
        d_in=integer_entry(values, "d_in", config_path),
        d_sae=integer_entry(values, "d_sae", config_path),
        architecture=architecture,
        **own.read_saelens_fields(values, config_path),
        topk_apply_relu=bool(extension.get("topk_apply_relu", True)),
        apply_b_dec_to_input=bool(values.get("apply_b_dec_to_input", True)),
        normalize_activations=normalization,
        scaling_factor=extension.get("scaling_factor") if normalization == "scaling_factor" else None,
        hook_name=metadata.get("hook_name") or values.get("hook_name") or values.get("hook_point"),
        token_set=extension.get("token_set", "all"),
        model_name=metadata.get("model_name") or values.get("model_name"),
        dtype=str(values.get("dtype") or "float32"),
    )
    tensors = own.fold_saelens_weights(values, _fold_legacy_scaling(values, tensors, config_path), config_path)
    return checked_checkpoint(config, tensors, folder / WEIGHTS_FILE)


def write(config: SAEConfig, state_dict: dict[str, Tensor], folder: Path) -> None:
    """Write ``config`` and ``state_dict`` to ``folder`` as ``cfg.json`` + ``sae_weights.safetensors``.

    Example:
        >>> write(sae.cfg, sae.state_dict(), Path("my_sae"))
    """
    folder.mkdir(parents=True, exist_ok=True)
    extension: dict[str, Any] = {"token_set": config.token_set, "topk_apply_relu": config.topk_apply_relu}
    normalization = config.normalize_activations
    if normalization == "scaling_factor":
        # SAELens folds this factor into the weights at the end of training and treats the name as a no-op
        # at inference; keeping it unfolded makes our round trip bit-exact, at the cost of SAELens ignoring it.
        logger.warning(
            "SAELens ignores the fixed scaling factor %s of this SAE at inference; vit_sae_hooks restores it.",
            config.scaling_factor,
        )
        extension["scaling_factor"] = config.scaling_factor
        normalization = "expected_average_only_in"
    own = architecture_class(config.architecture)
    values: dict[str, Any] = {
        "architecture": own.saelens_architecture,
        "d_in": config.d_in,
        "d_sae": config.d_sae,
        "dtype": config.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": config.apply_b_dec_to_input,
        "normalize_activations": normalization,
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": WRITTEN_SAELENS_LAYOUT,
            "hook_name": config.hook_name,
            "model_name": config.model_name,
            EXTENSION_KEY: extension,
        },
    }
    values.update(own.saelens_fields(config))
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    save_file(tensors, folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")


def _architecture(values: dict[str, Any], path: Path) -> str:
    """This library's architecture name for a SAELens ``cfg.json``."""
    architecture = values.get("architecture", "standard")
    # Before SAELens 6 a TopK SAE was architecture "standard" with activation_fn_str "topk".
    activation = values.get("activation_fn") or values.get("activation_fn_str") or "relu"
    if architecture == "standard" and activation == "topk":
        return "topk"
    if architecture == "standard" and activation != "relu":
        raise ConfigError(
            f"{path}: activation function {activation!r} is not supported for standard SAEs; "
            "vit_sae_hooks implements 'relu' and 'topk'."
        )
    for candidate in all_architecture_classes():
        if candidate.saelens_architecture == architecture:
            return candidate.architecture
    supported = sorted(candidate.saelens_architecture for candidate in all_architecture_classes())
    raise ConfigError(f"{path}: architecture {architecture!r} is not supported; vit_sae_hooks loads {supported}.")


def _normalization(value: Any, extension: dict[str, Any], path: Path) -> str:
    if value is None or value is False:
        return "none"
    if value is True or value == "expected_average_only_in":
        # SAELens folds this factor into the weights when training ends; only our own files carry it unfolded.
        return "scaling_factor" if "scaling_factor" in extension else "none"
    if value in ("none", "layer_norm", "constant_norm_rescale"):
        return value
    raise ConfigError(
        f"{path}: normalize_activations {value!r} is not supported; expected 'none', 'layer_norm', "
        "'constant_norm_rescale' or 'expected_average_only_in'."
    )


def _fold_legacy_scaling(values: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    scaling = tensors.get("scaling_factor")
    if scaling is None:
        return tensors
    tensors = dict(tensors)
    del tensors["scaling_factor"]
    if values.get("finetuning_scaling_factor", False):
        # Old SAELens multiplied the feature activations by this before decoding: the same as scaling W_dec rows.
        if "W_dec" not in tensors or scaling.shape != tensors["W_dec"].shape[:1]:
            raise CheckpointFormatError(
                f"{path}: scaling_factor has shape {list(scaling.shape)}, expected one value per latent."
            )
        tensors["W_dec"] = tensors["W_dec"] * scaling.to(tensors["W_dec"].dtype)[:, None]
    return tensors
