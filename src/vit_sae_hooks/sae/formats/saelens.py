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
    integer_entry,
    read_json,
    read_safetensors,
)

logger = logging.getLogger(__name__)

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
EXTENSION_KEY = "vit_sae_hooks"
# The SAELens release whose config layout `write` produces (metadata block, `architecture` key).
WRITTEN_SAELENS_LAYOUT = "6.0.0"

_UNSUPPORTED_ARCHITECTURES = ("gated", "batchtopk", "matryoshka_batchtopk", "transcoder", "skip_transcoder")


def matches(folder: Path) -> bool:
    """Whether ``folder`` holds a SAELens-layout SAE.

    Example:
        >>> matches(Path("tests/fixtures/saelens_topk"))
        True
    """
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


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

    architecture, k = _architecture(values, config_path)
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
        k=k,
        topk_apply_relu=bool(extension.get("topk_apply_relu", True)),
        apply_b_dec_to_input=bool(values.get("apply_b_dec_to_input", True)),
        normalize_activations=normalization,
        scaling_factor=extension.get("scaling_factor") if normalization == "scaling_factor" else None,
        hook_name=metadata.get("hook_name") or values.get("hook_name") or values.get("hook_point"),
        token_set=extension.get("token_set", "all"),
        model_name=metadata.get("model_name") or values.get("model_name"),
        dtype=str(values.get("dtype") or "float32"),
    )
    tensors = _fold_legacy_parameters(values, tensors, config_path)
    if architecture == "topk" and values.get("rescale_acts_by_decoder_norm", False):
        tensors = _fold_decoder_norm(tensors)
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
    values: dict[str, Any] = {
        "architecture": config.architecture,
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
    if config.architecture == "topk":
        values["k"] = config.k
        values["rescale_acts_by_decoder_norm"] = False
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    save_file(tensors, folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")


def _architecture(values: dict[str, Any], path: Path) -> tuple[str, int | None]:
    architecture = values.get("architecture", "standard")
    # Before SAELens 6 a TopK SAE was architecture "standard" with activation_fn_str "topk".
    activation = values.get("activation_fn") or values.get("activation_fn_str") or "relu"
    if architecture in _UNSUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"{path}: SAELens architecture {architecture!r} is not supported; vit_sae_hooks loads "
            "'standard', 'topk' and 'jumprelu' SAEs."
        )
    if architecture == "topk" or (architecture == "standard" and activation == "topk"):
        k = values.get("k")
        if k is None:
            k = (values.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise CheckpointFormatError(f"{path}: a topk SAE needs 'k' (or activation_fn_kwargs.k); none found.")
        return "topk", k
    if architecture in ("standard", "jumprelu"):
        if architecture == "standard" and activation != "relu":
            raise ConfigError(
                f"{path}: activation function {activation!r} is not supported for standard SAEs; "
                "vit_sae_hooks implements 'relu' and 'topk'."
            )
        return architecture, None
    raise ConfigError(
        f"{path}: unknown SAE architecture {architecture!r}; vit_sae_hooks loads 'standard', 'topk' and 'jumprelu'."
    )


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


def _fold_legacy_parameters(values: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    tensors = dict(tensors)
    if "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and values.get("finetuning_scaling_factor", False):
        # Old SAELens multiplied the feature activations by this before decoding: the same as scaling W_dec rows.
        if "W_dec" not in tensors or scaling.shape != tensors["W_dec"].shape[:1]:
            raise CheckpointFormatError(
                f"{path}: scaling_factor has shape {list(scaling.shape)}, expected one value per latent."
            )
        tensors["W_dec"] = tensors["W_dec"] * scaling.to(tensors["W_dec"].dtype)[:, None]
    return tensors


def _fold_decoder_norm(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    # SAELens ranks pre-activations scaled by each latent's decoder norm and divides them out before decoding;
    # scaling the encoder and unit-normalising the decoder computes the same thing with plain weights.
    tensors = dict(tensors)
    if "W_dec" not in tensors or "W_enc" not in tensors or "b_enc" not in tensors:
        return tensors
    norms = tensors["W_dec"].norm(dim=-1)
    tensors["W_enc"] = tensors["W_enc"] * norms
    tensors["b_enc"] = tensors["b_enc"] * norms
    tensors["W_dec"] = tensors["W_dec"] / norms[:, None]
    return tensors

