"""AIMv2 (``Aimv2VisionModel``, ``Aimv2Model``): RMSNorm everywhere, a normalised patch embedding, SwiGLU
blocks, and an attention-pooling head whose query is a learned token used as is.

Mapping onto HookedViT: ``normalization_type="RMS"``; ``patch_norm`` is ``embeddings.rms_norm``, applied
before positions are added; ``mlp_type="gated"`` (``act(gate) * up``); ``pool_type="attention"`` with the
identity as query projection (exact: the probe's entries are multiplied by 1 and summed with zeros);
``output_proj`` is the pool's output projection; ``Aimv2Model``'s ``visual_projection`` is the head.
Native-resolution checkpoints (``is_native``) use the fixed 2-D sine-cosine table instead of a learned one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vit_sae_hooks.model.config import HookedViTConfig
from vit_sae_hooks.model.loading.convert import BlockWeights, TensorSource, assemble_state_dict
from vit_sae_hooks.model.loading.hf_common import attention_tensors, vision_config

ANCHOR = "embeddings.patch_embed.weight"


def load_aimv2(
    source: TensorSource, prefix: str, vision: dict, architecture: str, name: str
) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """The HookedViT config and state dict of an AIMv2 vision tower whose keys start with ``prefix``.

    Example:
        >>> cfg, state = load_aimv2(source, "vision_model.", vision, "Aimv2Model", "apple/aimv2-large-patch14-224")
    """
    n_layers = source.count_indexed(f"{prefix}encoder.layers.")
    native = bool(vision.get("is_native", False))
    has_head = f"{prefix}head.cls_token" in source
    projection = source.optional("visual_projection.weight")
    cfg = vision_config(
        vision, n_layers=n_layers, default_act="silu", default_eps=1e-5, default_patch=14, name=name,
        architecture=architecture, eps_key="rms_norm_eps",
        normalization_type="RMS",
        mlp_type="gated",
        patch_norm=True,
        has_cls_token=False,
        pos_embed_prefix=0,
        positional_embedding_type="sincos" if native else "standard",
        pool_type="attention" if has_head else "mean",
        head_type="linear" if projection is not None else "none",
        d_output=None if projection is None else projection.shape[0],
    )
    blocks = [_block(source, f"{prefix}encoder.layers.{layer}.") for layer in range(n_layers)]
    state = assemble_state_dict(
        cfg,
        patch_weight=source.get(f"{prefix}{ANCHOR}"),
        patch_bias=source.optional(f"{prefix}embeddings.patch_embed.bias"),
        patch_norm=(source.get(f"{prefix}embeddings.rms_norm.weight"), None),
        cls_token=None,
        register_tokens=None,
        pos_embed=None if native else source.get(f"{prefix}embeddings.position_embedding.weight"),
        blocks=blocks,
        ln_pre=None,
        ln_final=(source.get(f"{prefix}rms_norm.weight"), None),
        head_weight=projection,
        map_pool=_head(source, f"{prefix}head.", cfg) if has_head else None,
    )
    return cfg, state


def _block(source: TensorSource, p: str) -> BlockWeights:
    attention = attention_tensors(source, p, "attention.", {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"})
    return BlockWeights(
        ln1_w=source.get(f"{p}rms_norm1.weight"), ln1_b=None, ln2_w=source.get(f"{p}rms_norm2.weight"), ln2_b=None,
        fc1_w=source.get(f"{p}ffn.up_proj.weight"), fc1_b=source.optional(f"{p}ffn.up_proj.bias"),
        gate_w=source.get(f"{p}ffn.gate_proj.weight"), gate_b=source.optional(f"{p}ffn.gate_proj.bias"),
        fc2_w=source.get(f"{p}ffn.down_proj.weight"), fc2_b=source.optional(f"{p}ffn.down_proj.bias"),
        **attention,
    )


def _head(source: TensorSource, h: str, cfg: HookedViTConfig) -> dict:
    # The query is the learned token itself: an identity projection (per head, d_head columns each).
    key = source.get(f"{h}k_proj.weight")
    identity = torch.eye(cfg.d_model, dtype=key.dtype)
    block = BlockWeights(
        ln1_w=None, ln1_b=None, ln2_w=None, ln2_b=None, fc1_w=None, fc1_b=None, fc2_w=None, fc2_b=None,
        q_w=identity, q_b=None,
        k_w=key, k_b=source.optional(f"{h}k_proj.bias"),
        v_w=source.get(f"{h}v_proj.weight"), v_b=source.optional(f"{h}v_proj.bias"),
        o_w=source.get(f"{h}output_proj.weight"), o_b=source.optional(f"{h}output_proj.bias"),
    )
    return {"probe": source.get(f"{h}cls_token"), "block": block}
