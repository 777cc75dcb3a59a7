"""Short activation names to full hook names, TransformerLens-style: ``("resid_post", 3)`` → ``blocks.3.hook_resid_post``."""

from __future__ import annotations

import re

from vit_sae_hooks._tl import tl_get_act_name

# Hooks this library adds outside any block, which TransformerLens's table does not know.
_MODEL_LEVEL = {"pooled": "hook_pooled", "output": "hook_output", "full_embed": "hook_full_embed"}


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """The full hook name for a short activation name and layer.

    Accepts every TransformerLens shorthand (``"resid_post"``, ``"mlp_out"``, ``"pattern"``, ``"q"``,
    ``"scale"`` with ``layer_type="ln1"``...) plus ``"pooled"``, ``"output"`` and ``"full_embed"``.

    Example:
        >>> get_act_name("resid_post", 3)
        'blocks.3.hook_resid_post'
    """
    if layer is None and name in _MODEL_LEVEL:
        return _MODEL_LEVEL[name]
    return tl_get_act_name(name, layer, layer_type)


def hook_layer(hook_name: str) -> int | None:
    """The block index in ``blocks.L.*`` hook names, None for hooks outside the blocks.

    Example:
        >>> hook_layer("blocks.9.hook_resid_post")
        9
    """
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else None
