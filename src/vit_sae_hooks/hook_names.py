"""Hook names, parsed in one place: short names to full ones, the block a hook lives in, where a run may stop,
and the shape of the activation a hook carries.

TransformerLens-style names: ``("resid_post", 3)`` → ``blocks.3.hook_resid_post``; hooks outside the blocks
are ``hook_embed``, ``ln_pre.hook_normalized``, ``ln_final.hook_normalized``, ``pool.*``, ``hook_pooled`` and
``hook_output``.

Example:
    >>> get_act_name("resid_post", 3), hook_layer("blocks.3.attn.hook_z")
    ('blocks.3.hook_resid_post', 3)
"""

from __future__ import annotations

import re
from typing import Any

from vit_sae_hooks._tl import tl_get_act_name
from vit_sae_hooks.errors import HookNameError

# Hooks this library adds outside any block, which TransformerLens's table does not know.
_MODEL_LEVEL = {"pooled": "hook_pooled", "output": "hook_output", "full_embed": "hook_full_embed"}
_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
# Hooks computed before the first block: a run with stop_at_layer=0 reaches them.
_EMBEDDING_HOOKS = ("hook_embed", "hook_pos_embed", "hook_full_embed", "ln_pre.")
_PER_HEAD = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_rot_q", "hook_rot_k")
_PER_HEAD_MODEL_WIDTH = ("hook_result", "hook_q_input", "hook_k_input", "hook_v_input")
# Hooks whose activations are [batch, pos, head, d]: one vector per head and token.
PER_HEAD_HOOKS = _PER_HEAD + _PER_HEAD_MODEL_WIDTH
_MLP_WIDTH = ("hook_pre", "hook_pre_linear", "hook_post")


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


def split_block_hook(hook_name: str) -> tuple[int, str] | None:
    """``(layer, rest)`` for a hook inside a block (``blocks.9.attn.hook_z`` → ``(9, "attn.hook_z")``), else None.

    Example:
        >>> split_block_hook("blocks.9.hook_resid_post")
        (9, 'hook_resid_post')
    """
    match = _BLOCK_HOOK.match(hook_name)
    return (int(match.group(1)), match.group(2)) if match else None


def hook_layer(hook_name: str) -> int | None:
    """The block index in ``blocks.L.*`` hook names, None for hooks outside the blocks.

    Example:
        >>> hook_layer("blocks.9.hook_resid_post")
        9
    """
    parts = split_block_hook(hook_name)
    return parts[0] if parts else None


def block_input(layer: int) -> str:
    """The hook carrying the residual stream that enters block ``layer`` (what ``start_at_layer`` resumes from).

    Example:
        >>> block_input(6)
        'blocks.6.hook_resid_pre'
    """
    return f"blocks.{layer}.hook_resid_pre"


def stop_layer(hook_name: str) -> int | None:
    """The ``stop_at_layer`` that still computes ``hook_name`` (None: the whole model is needed).

    Example:
        >>> stop_layer("blocks.9.hook_resid_post")
        10
    """
    layer = hook_layer(hook_name)
    if layer is not None:
        return layer + 1
    if hook_name.startswith(_EMBEDDING_HOOKS):
        return 0
    return None


def additive_boundary(hook_name: str) -> int | None:
    """For hooks whose edits land unchanged on the residual stream entering a block: that block's index.

    ``resid_pre`` is that stream itself; ``resid_post = resid_mid + mlp_out`` is the next block's input, so an
    edit of either adds to it as is. Other hooks pass through later computation before reaching the stream.

    Example:
        >>> additive_boundary("blocks.4.hook_mlp_out")
        5
    """
    parts = split_block_hook(hook_name)
    if parts is None:
        return None
    layer, rest = parts
    if rest == "hook_resid_pre":
        return layer
    if rest in ("hook_resid_post", "hook_mlp_out"):
        return layer + 1
    return None


def activation_shape(cfg: Any, hook_name: str) -> tuple[tuple[int, ...], bool]:
    """The trailing (feature) shape of the activation at ``hook_name`` and whether it has a token axis.

    ``cfg`` is a :class:`~vit_sae_hooks.HookedViTConfig`. Attention scores and patterns have no feature
    axis, so no per-token vector lives there: asking for them is a :class:`HookNameError`.

    Example:
        >>> activation_shape(model.cfg, "blocks.3.attn.hook_z")  # CLIP B/32
        ((12, 64), True)
    """
    leaf = hook_name.rsplit(".", 1)[-1]
    in_pool = hook_name.startswith("pool.")
    if leaf in ("hook_attn_scores", "hook_pattern"):
        raise HookNameError(f"{hook_name!r} holds attention patterns [batch, head, query, key], which have no feature axis")
    if leaf == "hook_scale":
        return (1,), not (hook_name.startswith("ln_final") and cfg.final_ln_after_pool)
    if leaf in _PER_HEAD:
        return (cfg.n_heads, cfg.d_head), True
    if leaf in _PER_HEAD_MODEL_WIDTH:
        return (cfg.n_heads, cfg.d_model), True
    if leaf in _MLP_WIDTH:
        return (cfg.d_mlp,), not in_pool
    if leaf == "hook_output":
        return (cfg.d_out,), False
    if leaf == "hook_pooled" or (hook_name.startswith("ln_final") and cfg.final_ln_after_pool):
        return (cfg.d_model,), False
    return (cfg.d_model,), not in_pool
