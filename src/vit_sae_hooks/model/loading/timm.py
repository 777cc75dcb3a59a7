"""timm ViT exports (``config.json`` with ``architecture`` + ``model.safetensors``), classic and CLIP-style."""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor

from vit_sae_hooks.errors import CheckpointFormatError
from vit_sae_hooks.model.config import HookedViTConfig
from vit_sae_hooks.model.loading.convert import (
    BlockWeights,
    TensorSource,
    assemble_state_dict,
    fused_qkv_block,
    load_tensors,
)

TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")

# timm's ViT size names -> number of heads (widths and depths are read from the weights).
_HEADS_BY_SIZE = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "huge": 16, "giant": 16, "gigantic": 16}
_ARCH_PATTERN = re.compile(r"^vit_(?P<size>[a-z]+)_patch(?P<patch>\d+)(?P<rest>.*)$")
_POOL_TYPES = {"token": "cls", "avg": "mean"}


def load_timm(folder: Path, config: dict) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """Convert a timm ``VisionTransformer`` export in ``folder`` (its ``config.json`` already parsed)."""
    origin = folder / "config.json"
    architecture = str(config.get("architecture", ""))
    match = _ARCH_PATTERN.match(architecture)
    if match is None or match["size"] not in _HEADS_BY_SIZE:
        raise CheckpointFormatError(
            f"{origin}: timm architecture {architecture!r} is not supported; supported are timm "
            f"VisionTransformer models named vit_<size>_patch<N>_... with size in {sorted(_HEADS_BY_SIZE)}"
        )
    args = dict(config.get("model_args") or {})
    source = load_tensors(folder, TIMM_WEIGHT_FILES)
    if any(k.startswith("attn_pool.") for k in source.tensors):
        raise CheckpointFormatError(f"{source.origin}: timm attention-pool (MAP) heads are not supported yet")
    global_pool = args.get("global_pool", config.get("global_pool", "token"))
    if global_pool not in _POOL_TYPES:
        raise CheckpointFormatError(
            f"{origin}: global_pool={global_pool!r} is not supported; supported: {sorted(_POOL_TYPES)}"
        )
    patch_weight = source.get("patch_embed.proj.weight")
    d_model = patch_weight.shape[0]
    image_size = args.get("img_size") or (config.get("pretrained_cfg") or {}).get("input_size", [3, 224, 224])[-2:]
    is_clip = "_clip_" in architecture
    act = args.get("act_layer") or ("quick_gelu" if "quickgelu" in architecture else "gelu")
    cls_token = source.optional("cls_token")
    registers = source.optional("reg_token")
    n_prefix = int(cls_token is not None) + (0 if registers is None else registers.shape[-2])
    pos_embed = source.get("pos_embed")
    fc_norm = source.optional("fc_norm.weight") is not None
    head = source.optional("head.weight")
    n_layers = source.count_indexed("blocks.")
    cfg_kwargs = dict(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=int(args.get("num_heads", _HEADS_BY_SIZE[match["size"]])),
        d_mlp=source.get("blocks.0.mlp.fc1.weight").shape[0],
        image_size=image_size if isinstance(image_size, int) else tuple(image_size),
        patch_size=tuple(patch_weight.shape[-2:]),
        n_channels=patch_weight.shape[1],
        act_fn=act,
        # timm's ViT uses LayerNorm(eps=1e-6); its CLIP ports keep nn.LayerNorm's 1e-5.
        eps=1e-5 if is_clip else 1e-6,
        ln_pre=source.optional("norm_pre.weight") is not None,
        ln_final=fc_norm or source.optional("norm.weight") is not None,
        final_ln_after_pool=fc_norm,
        patch_bias=source.optional("patch_embed.proj.bias") is not None,
        has_cls_token=cls_token is not None,
        n_register_tokens=0 if registers is None else registers.shape[-2],
        pool_type=_POOL_TYPES[global_pool],
        head_type="linear" if head is not None else "none",
        d_output=None if head is None else head.shape[0],
        model_name=str(config.get("hf_hub_id") or architecture),
        original_architecture=f"timm.{architecture}",
    )
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    grid = (height // patch_weight.shape[-2]) * (width // patch_weight.shape[-1])
    # timm's no_embed_class models keep position embeddings for the patches only.
    pos_embed_prefix = pos_embed.shape[-2] - grid
    if pos_embed_prefix not in (0, n_prefix):
        raise CheckpointFormatError(
            f"{source.origin}: pos_embed has {pos_embed.shape[-2]} positions, which fits neither {grid} patches "
            f"nor {grid} patches plus {n_prefix} prefix tokens; check img_size in {origin}"
        )
    cfg = HookedViTConfig(**cfg_kwargs, pos_embed_prefix=pos_embed_prefix)
    blocks = [_block(source, f"blocks.{layer}.") for layer in range(n_layers)]
    final_norm = "fc_norm" if fc_norm else "norm"
    state = assemble_state_dict(
        cfg,
        patch_weight=patch_weight,
        patch_bias=source.optional("patch_embed.proj.bias"),
        cls_token=cls_token,
        register_tokens=registers,
        pos_embed=pos_embed,
        blocks=blocks,
        ln_pre=(source.get("norm_pre.weight"), source.get("norm_pre.bias")) if cfg.ln_pre else None,
        ln_final=(source.get(f"{final_norm}.weight"), source.get(f"{final_norm}.bias")) if cfg.ln_final else None,
        head_weight=head,
        head_bias=source.optional("head.bias"),
    )
    return cfg, state


def _block(source: TensorSource, p: str) -> BlockWeights:
    return fused_qkv_block(
        source, p, ln1="norm1", qkv=("attn.qkv.weight", "attn.qkv.bias"), out="attn.proj", ln2="norm2",
        fc1="mlp.fc1", fc2="mlp.fc2", layer_scales=("ls1.gamma", "ls2.gamma"),
    )
