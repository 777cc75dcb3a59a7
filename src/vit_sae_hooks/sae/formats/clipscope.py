"""clipscope layout: ``{layer}_resid/{tokens_seen}.pt`` holding ``{"k", "n_features", "d_in", "model_state_dict"}``.

clipscope's TopK has no encoder bias and no ReLU (negative top-k values pass through): ``pre = (x - pre_b)
@ enc``, keep the k largest, ``recon = latents @ dec + pre_b``. So ``pre_b`` is our ``b_dec`` subtracted from
the input, ``b_enc`` is zero and ``topk_apply_relu`` is False. The file names no base model; the
registry entry (``vit_sae_hooks.pretrained``) supplies it. ``{layer}_resid`` is the output of the HF CLIP
vision encoder layer ``layer``, i.e. ``blocks.{layer}.hook_resid_post``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vit_sae_hooks.errors import CheckpointFormatError
from vit_sae_hooks.sae.formats._io import (
    LoadedCheckpoint,
    build_config,
    checked_checkpoint,
    integer_entry,
    require,
    tensor_entry,
)

_LAYER_FOLDER = re.compile(r"^(\d+)_resid$")


def matches(checkpoint: Any) -> bool:
    """Whether an unpickled ``.pt`` object has clipscope's layout.

    Example:
        >>> matches({"k": 32, "n_features": 65536, "d_in": 1024, "model_state_dict": {}})
        True
    """
    return isinstance(checkpoint, dict) and "model_state_dict" in checkpoint


def hook_name_for(folder_name: str) -> str | None:
    """Our hook name for a clipscope checkpoint folder (``22_resid`` -> ``blocks.22.hook_resid_post``).

    Example:
        >>> hook_name_for("22_resid")
        'blocks.22.hook_resid_post'
    """
    match = _LAYER_FOLDER.match(folder_name)
    return f"blocks.{match.group(1)}.hook_resid_post" if match else None


def read(path: Path, checkpoint: dict[str, Any]) -> LoadedCheckpoint:
    """The clipscope SAE whose unpickled ``path`` is ``checkpoint``.

    Example:
        >>> read(path, load_torch_checkpoint(path))  # path = Path("clipscope_topk/3_resid/1000.pt")
    """
    weights = require(checkpoint, "model_state_dict", path)
    if not isinstance(weights, dict):
        raise CheckpointFormatError(f"{path}: 'model_state_dict' is a {type(weights).__name__}, expected a dict.")
    unexpected = sorted(set(weights) - {"pre_b", "enc", "dec"})
    if unexpected:
        raise CheckpointFormatError(
            f"{path}: model_state_dict has {unexpected} besides pre_b/enc/dec; this is not a clipscope TopKSAE "
            "(switch SAEs are not supported)."
        )
    d_sae = integer_entry(checkpoint, "n_features", path)
    config = build_config(
        path,
        d_in=integer_entry(checkpoint, "d_in", path),
        d_sae=d_sae,
        architecture="topk",
        k=integer_entry(checkpoint, "k", path),
        topk_apply_relu=False,
        apply_b_dec_to_input=True,
        hook_name=hook_name_for(path.parent.name),
    )
    encoder = tensor_entry(weights, "enc", path)
    state_dict = {
        "W_enc": encoder,
        "b_enc": torch.zeros(d_sae, dtype=encoder.dtype),
        "W_dec": tensor_entry(weights, "dec", path),
        "b_dec": tensor_entry(weights, "pre_b", path),
    }
    return checked_checkpoint(config, state_dict, path)
