"""EleutherAI sparsify layout: ``<hookpoint>/cfg.json`` + ``<hookpoint>/sae.safetensors``.

sparsify stores the encoder as an ``nn.Linear`` (``encoder.weight [d_sae, d_in]``, ``encoder.bias``) and
``W_dec [d_sae, d_in]``; it subtracts ``b_dec`` before encoding and applies ReLU before TopK, which keeps the
same values as TopK-then-ReLU. The folder name is the hookpoint: ``layers.N`` is the residual stream after
block N (``blocks.N.hook_resid_post``), ``layers.N.mlp`` the MLP output, ``layers.N.self_attn`` /
``layers.N.attn`` the attention output; other names are kept as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.sae.formats._io import (
    LoadedCheckpoint,
    build_config,
    checked_checkpoint,
    has_files,
    integer_entry,
    read_json,
    read_safetensors,
    tensor_entry,
)

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"

_HOOKPOINT = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.(mlp|self_attn|attn))?$")
_SUBTYPE_HOOKS = {None: "hook_resid_post", "mlp": "hook_mlp_out", "self_attn": "hook_attn_out", "attn": "hook_attn_out"}


def matches(folder: Path) -> bool:
    """Whether ``folder`` holds a sparsify-layout SAE.

    Example:
        >>> matches(Path("tests/fixtures/sparsify_topk/layers.3"))
        True
    """
    return has_files(folder, CONFIG_FILE, WEIGHTS_FILE)


def hook_name_for(hookpoint: str) -> str:
    """Our hook name for a sparsify hookpoint (``layers.3`` -> ``blocks.3.hook_resid_post``).

    Example:
        >>> hook_name_for("layers.3.mlp")
        'blocks.3.hook_mlp_out'
    """
    match = _HOOKPOINT.search(hookpoint)
    if match is None:
        return hookpoint
    return f"blocks.{match.group(1)}.{_SUBTYPE_HOOKS[match.group(2)]}"


def read(folder: Path) -> LoadedCheckpoint:
    """The sparsify SAE in ``folder``, with the encoder transposed to ``W_enc [d_in, d_sae]``.

    Example:
        >>> checkpoint = read(Path("tests/fixtures/sparsify_topk/layers.3"))
    """
    config_path = folder / CONFIG_FILE
    values = read_json(config_path)
    weights_path = folder / WEIGHTS_FILE
    tensors = read_safetensors(weights_path)
    for flag in ("transcode", "skip_connection", "signed"):
        if values.get(flag):
            raise ConfigError(f"{config_path}: sparsify option {flag}=true is not supported by vit_sae_hooks.")
    activation = values.get("activation", "topk")
    if activation != "topk":
        raise ConfigError(f"{config_path}: sparsify activation {activation!r} is not supported; only 'topk' is.")
    encoder_weight = tensor_entry(tensors, "encoder.weight", weights_path)
    d_in = values.get("d_in") or encoder_weight.shape[-1]
    d_sae = values.get("num_latents") or d_in * integer_entry(values, "expansion_factor", config_path)
    config = build_config(
        config_path,
        d_in=d_in,
        d_sae=d_sae,
        architecture="topk",
        k=integer_entry(values, "k", config_path),
        apply_b_dec_to_input=True,
        hook_name=hook_name_for(folder.name),
    )
    state_dict = {
        "W_enc": encoder_weight.T,
        "b_enc": tensor_entry(tensors, "encoder.bias", weights_path),
        **{name: tensor for name, tensor in tensors.items() if not name.startswith("encoder.")},
    }
    return checked_checkpoint(config, state_dict, weights_path)
