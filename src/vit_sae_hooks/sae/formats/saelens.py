"""SAELens layout, read and written: ``cfg.json`` + ``sae_weights.safetensors``.

This is also the layout :meth:`SAE.save` writes, so SAELens reads our SAEs and computes the same features:
a fixed scaling factor is folded into the weights, and an SAE SAELens cannot represent (a TopK without ReLU)
is refused unless the caller accepts the loss. Fields SAELens has no slot for (the token set, the ReLU-less
TopK flag) go under ``metadata.vit_sae_hooks``, which SAELens keeps as opaque metadata and this reader restores.

Read: SAELens 6 (``metadata.hook_name``) and earlier configs (``hook_name`` / ``hook_point`` at top level,
``activation_fn_str`` + ``activation_fn_kwargs.k`` for TopK, boolean ``normalize_activations``), the
``standard``, ``topk``, ``jumprelu`` and ``gated`` architectures, BatchTopK and Matryoshka SAEs in both the
training form (``batchtopk`` / ``matryoshka_batchtopk``, a scalar ``topk_threshold``) and the inference form
(``jumprelu`` naming them in ``metadata.training_architecture``), the four transcoders (``d_out``,
``metadata.hook_name_out``), ``rescale_acts_by_decoder_norm`` and the legacy ``finetuning_scaling_factor`` and
``log_threshold`` parameters (all folded into the plain weights).
"""

from __future__ import annotations

import json
import logging
import warnings
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
from vit_sae_hooks.sae.registry import all_architecture_classes, architecture_class, sae_class

logger = logging.getLogger(__name__)

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
EXTENSION_KEY = "vit_sae_hooks"
# SAELens's transcoder architectures, by (this library's activation, skip connection).
SAELENS_TRANSCODERS = {
    ("standard", False): "transcoder",
    ("standard", True): "skip_transcoder",
    ("jumprelu", False): "jumprelu_transcoder",
    ("jumprelu", True): "jumprelu_skip_transcoder",
}
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
    return parse(read_json(config_path), read_safetensors(folder / WEIGHTS_FILE), config_path, folder / WEIGHTS_FILE)


def parse(values: dict[str, Any], tensors: dict[str, Tensor], source: object, weights_source: object = None) -> LoadedCheckpoint:
    """An SAE from SAELens's config values (``cfg.json``, or ``sae_lens.SAE.cfg.to_dict()``) and its tensors.

    ``source`` names the config in error messages, ``weights_source`` the tensors (default: ``source``).

    Example:
        >>> checkpoint = parse(sae_lens_sae.cfg.to_dict(), sae_lens_sae.state_dict(), "the sae_lens.SAE")
    """
    metadata = values.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise CheckpointFormatError(f"{source}: 'metadata' is {metadata!r}, expected an object.")
    extension = metadata.get(EXTENSION_KEY) or {}
    architecture = _architecture(values, metadata, extension, source)
    own = architecture_class(architecture)
    transcoder = _transcoder_fields(values, metadata, extension, source)
    if values.get("reshape_activations", "none") not in ("none", None) or values.get("hook_head_index") is not None:
        raise ConfigError(
            f"{source}: per-head (hook_z) SAEs are not supported by vit_sae_hooks; "
            "use an SAE trained on a full hook such as 'blocks.L.hook_resid_post'."
        )
    normalization = _normalization(values.get("normalize_activations", "none"), extension, source)
    config = build_config(
        source,
        d_in=integer_entry(values, "d_in", source),
        d_sae=integer_entry(values, "d_sae", source),
        architecture=architecture,
        **own.read_saelens_fields(values, source),
        topk_apply_relu=bool(extension.get("topk_apply_relu", True)),
        apply_b_dec_to_input=bool(values.get("apply_b_dec_to_input", True)),
        normalize_activations=normalization,
        scaling_factor=extension.get("scaling_factor") if normalization == "scaling_factor" else None,
        hook_name=metadata.get("hook_name") or values.get("hook_name") or values.get("hook_point"),
        token_set=extension.get("token_set", "all"),
        model_name=metadata.get("model_name") or values.get("model_name"),
        dtype=str(values.get("dtype") or "float32").removeprefix("torch."),
        **transcoder,
    )
    tensors = own.fold_saelens_weights(values, _fold_legacy_scaling(values, tensors, source), source)
    return checked_checkpoint(config, tensors, weights_source or source)


def saelens_form(
    config: SAEConfig, state_dict: dict[str, Tensor], allow_lossy: bool = False
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The SAELens config values and tensors that compute what ``config`` and ``state_dict`` compute.

    A fixed scaling factor is folded into the weights (``W_enc·s``, ``W_dec/s``, ``b_dec/s``), as SAELens
    does when training ends, so SAELens gives the same outputs. What SAELens cannot express (a TopK SAE
    without ReLU) raises a :class:`ConfigError` naming the difference, unless ``allow_lossy``: then it is
    written anyway (SAELens will compute differently; this library reads it back exactly).

    Example:
        >>> values, tensors = saelens_form(sae.cfg, sae.state_dict())
    """
    own = sae_class(config)
    difference = own.saelens_difference(config)
    if difference is not None and not allow_lossy:
        raise ConfigError(
            f"SAELens cannot represent this SAE: {difference}. SAELens would load it without a word and compute "
            "different features; pass allow_lossy=True to write it anyway (vit_sae_hooks reads it back exactly)."
        )
    if difference is not None:
        logger.warning("writing an SAE SAELens will read differently: %s", difference)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    extension: dict[str, Any] = {
        "architecture": config.architecture, "token_set": config.token_set, "topk_apply_relu": config.topk_apply_relu,
    }
    if config.is_transcoder:
        extension["skip_connection"] = config.skip_connection
    if config.normalize_activations == "scaling_factor":
        factor = config.scaling_factor
        tensors["W_enc"] = tensors["W_enc"] * factor
        tensors["W_dec"] = tensors["W_dec"] / factor
        tensors["b_dec"] = tensors["b_dec"] / factor
        extension["folded_scaling_factor"] = factor
    normalization = "none" if config.normalize_activations == "scaling_factor" else config.normalize_activations
    values: dict[str, Any] = {
        "architecture": own.saelens_architecture_for(config),
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
    values["metadata"].update(own.saelens_metadata(config))
    values.update(own.saelens_fields(config))
    return values, own.saelens_weights(config, tensors)


def write(config: SAEConfig, state_dict: dict[str, Tensor], folder: Path, allow_lossy: bool = False) -> None:
    """Write ``config`` and ``state_dict`` to ``folder`` as ``cfg.json`` + ``sae_weights.safetensors``, in the
    form :func:`saelens_form` gives (so SAELens computes the same features, or the write is refused).

    Example:
        >>> write(sae.cfg, sae.state_dict(), Path("my_sae"))
    """
    values, tensors = saelens_form(config, state_dict, allow_lossy)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")


class SAELensView:
    """A ``sae_lens.SAE`` seen through the attributes splicing reads (``d_in``, ``hook_name``, ``token_set``,
    ``use_error_term``, ``hook_dict``), so a HookedViT splices SAELens's own object, whose forward runs as is.

    Example:
        >>> view = SAELensView(sae_lens_sae); view.hook_name
        'blocks.9.hook_resid_post'
    """

    token_set = "all"

    def __init__(self, sae: Any) -> None:
        if getattr(sae.cfg, "d_out", None) is not None:
            raise ConfigError(
                f"a SAELens {type(sae).__name__} is a transcoder, whose forward has no place for the true output its "
                "error term needs; splice SAE.from_saelens(transcoder) instead (the same weights, as this library's "
                "Transcoder)."
            )
        self.module = sae

    @property
    def d_in(self) -> int:
        """The width SAELens's config records."""
        return int(self.module.cfg.d_in)

    @property
    def hook_name(self) -> str | None:
        """The hook SAELens's metadata records."""
        return getattr(self.module.cfg.metadata, "hook_name", None)

    @property
    def hook_dict(self) -> dict[str, Any]:
        """SAELens's own HookPoints (the same names as this library's)."""
        return self.module.hook_dict

    @property
    def use_error_term(self) -> bool:
        """SAELens's error-term flag."""
        return bool(self.module.use_error_term)

    @use_error_term.setter
    def use_error_term(self, value: bool) -> None:
        # SAELens deprecates setting the flag in favour of its own transformer class's add_sae; splicing here is
        # that use.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module.use_error_term = value

    def __call__(self, x: Tensor) -> Tensor:
        return self.module(x)


def is_saelens_sae(candidate: Any) -> bool:
    """Whether ``candidate`` is an SAE object of the sae_lens package (checked without importing sae_lens).

    Example:
        >>> is_saelens_sae(sae_lens.SAE.load_from_disk("my_sae"))
        True
    """
    return type(candidate).__module__.split(".")[0] == "sae_lens" and hasattr(candidate, "cfg") and hasattr(candidate, "W_enc")


def _architecture(values: dict[str, Any], metadata: dict[str, Any], extension: dict[str, Any], path: object) -> str:
    """This library's architecture name for a SAELens ``cfg.json`` (transcoder names give their activation)."""
    if isinstance(extension, dict) and isinstance(extension.get("architecture"), str):
        # Written by this library: the name SAELens sees may only approximate it (a lossy save).
        return extension["architecture"]
    architecture = values.get("architecture", "standard")
    if not isinstance(architecture, str):
        raise CheckpointFormatError(f"{path}: 'architecture' is {architecture!r}, expected a name such as 'topk'.")
    # Before SAELens 6 a TopK SAE was architecture "standard" with activation_fn_str "topk".
    activation = values.get("activation_fn") or values.get("activation_fn_str") or "relu"
    if architecture == "standard" and activation == "topk":
        return "topk"
    if architecture == "standard" and activation != "relu":
        raise ConfigError(
            f"{path}: activation function {activation!r} is not supported for standard SAEs; "
            "vit_sae_hooks implements 'relu' and 'topk'."
        )
    transcoders = {name: activation for (activation, _), name in SAELENS_TRANSCODERS.items()}
    if architecture in transcoders:
        return transcoders[architecture]
    classes = all_architecture_classes()
    if architecture == "jumprelu":
        # SAELens saves BatchTopK and Matryoshka SAEs for inference as JumpReLU, naming them in the metadata.
        trained_as = metadata.get("training_architecture")
        details = metadata.get("training_architecture_details")
        for candidate in classes:
            trained = getattr(candidate, "saelens_training_architecture", None)
            if trained is not None and trained == trained_as and isinstance(details, dict) and "k" in details:
                return candidate.architecture
        return "jumprelu"
    for candidate in classes:
        if architecture in (candidate.saelens_architecture, getattr(candidate, "saelens_training_architecture", None)):
            return candidate.architecture
    supported = sorted(
        {c.saelens_architecture for c in classes} | {getattr(c, "saelens_training_architecture", "") for c in classes}
        | set(transcoders)
    )
    raise ConfigError(f"{path}: architecture {architecture!r} is not supported; vit_sae_hooks loads {supported[1:]}.")


def _transcoder_fields(
    values: dict[str, Any], metadata: dict[str, Any], extension: dict[str, Any], path: object
) -> dict[str, Any]:
    name = values.get("architecture", "")
    if "d_out" not in values and not str(name).endswith("transcoder"):
        return {}
    written_here = isinstance(extension, dict) and "architecture" in extension
    if not written_here and values.get("normalize_activations", "none") not in ("none", None, False):
        raise ConfigError(
            f"{path}: a SAELens transcoder with normalize_activations={values['normalize_activations']!r} normalises "
            "its input but not its prediction, which vit_sae_hooks does not implement; use one saved with 'none'."
        )
    skip = extension.get("skip_connection", "skip" in str(name))
    return {"d_out": integer_entry(values, "d_out", path), "hook_name_out": metadata.get("hook_name_out"),
            "skip_connection": bool(skip)}


def _normalization(value: Any, extension: dict[str, Any], path: Path) -> str:
    if value is None or value is False:
        return "none"
    if value is True or value == "expected_average_only_in":
        # SAELens folds this factor into the weights when training ends; only files this library wrote before
        # it folded the factor too carry it unfolded (with the factor in the extension).
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
