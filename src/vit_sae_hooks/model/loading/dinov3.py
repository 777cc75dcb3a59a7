"""DINOv3 (``DINOv3ViTModel``, model type ``dinov3_vit``): rotary positions, register tokens, layer scale.

Tokens are ``[CLS, registers..., patches...]`` with no learned position table; queries and keys of the
patch tokens are rotated (2-D, ``Rotary`` style ``"dinov3"``). Blocks are pre-LN with layer scale (folded
into the output projections) and a plain or gated MLP whose gate uses ``hidden_act``.
"""

from __future__ import annotations

from torch import Tensor

from vit_sae_hooks.model.config import HookedViTConfig
from vit_sae_hooks.model.loading.convert import BlockWeights, TensorSource, assemble_state_dict
from vit_sae_hooks.model.loading.hf_common import attention_tensors, vision_config

ANCHOR = "embeddings.patch_embeddings.weight"


def load_dinov3(
    source: TensorSource, prefix: str, vision: dict, architecture: str, name: str
) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """The HookedViT config and state dict of a DINOv3 checkpoint whose vision keys start with ``prefix``.

    Example:
        >>> cfg, state = load_dinov3(source, "", config, "DINOv3ViTModel", "facebook/dinov3-vits16-pretrain-lvd1689m")
    """
    # transformers keeps blocks under model.layer.N in memory and writes layer.N to disk; read either.
    blocks_prefix = f"{prefix}model.layer." if f"{prefix}model.layer.0.norm1.weight" in source else f"{prefix}layer."
    n_layers = source.count_indexed(blocks_prefix)
    gated = bool(vision.get("use_gated_mlp", False))
    registers = source.optional(f"{prefix}embeddings.register_tokens")
    if registers is not None and registers.shape[-2] == 0:
        registers = None  # transformers keeps an empty [1, 0, d] parameter when there are no registers
    patch_bias = source.optional(f"{prefix}embeddings.patch_embeddings.bias")
    cfg = vision_config(
        vision, n_layers=n_layers, default_act="gelu", default_eps=1e-5, default_patch=16, name=name,
        architecture=architecture,
        mlp_type="gated" if gated else "standard",
        patch_bias=patch_bias is not None,
        n_register_tokens=0 if registers is None else registers.shape[-2],
        positional_embedding_type="rotary",
        rotary_style="dinov3",
        rotary_base=float(vision.get("rope_theta", 100.0)),
        pool_type="cls",
    )
    blocks = [_block(source, f"{blocks_prefix}{layer}.", gated) for layer in range(n_layers)]
    state = assemble_state_dict(
        cfg,
        patch_weight=source.get(f"{prefix}{ANCHOR}"),
        patch_bias=patch_bias,
        cls_token=source.get(f"{prefix}embeddings.cls_token"),
        register_tokens=registers,
        pos_embed=None,
        blocks=blocks,
        ln_pre=None,
        ln_final=(source.get(f"{prefix}norm.weight"), source.get(f"{prefix}norm.bias")),
    )
    return cfg, state


def _block(source: TensorSource, p: str, gated: bool) -> BlockWeights:
    attention = attention_tensors(source, p, "attention.", {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"})
    mlp = dict(
        fc1_w=source.get(f"{p}mlp.up_proj.weight"), fc1_b=source.optional(f"{p}mlp.up_proj.bias"),
        fc2_w=source.get(f"{p}mlp.down_proj.weight"), fc2_b=source.optional(f"{p}mlp.down_proj.bias"),
    )
    if gated:
        mlp.update(gate_w=source.get(f"{p}mlp.gate_proj.weight"), gate_b=source.optional(f"{p}mlp.gate_proj.bias"))
    return BlockWeights(
        ln1_w=source.get(f"{p}norm1.weight"), ln1_b=source.get(f"{p}norm1.bias"),
        ln2_w=source.get(f"{p}norm2.weight"), ln2_b=source.get(f"{p}norm2.bias"),
        layer_scale_attn=source.get(f"{p}layer_scale1.lambda1"), layer_scale_mlp=source.get(f"{p}layer_scale2.lambda1"),
        **attention, **mlp,
    )
