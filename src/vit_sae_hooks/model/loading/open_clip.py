"""open_clip hub checkpoints: ``open_clip_config.json`` + ``open_clip_model.safetensors`` (or ``.bin``), visual tower only."""

from __future__ import annotations

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

OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

_POOL_TYPES = {"tok": "cls", "avg": "mean"}


def load_open_clip(folder: Path, config: dict) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """Convert the ``visual.*`` tower of an open_clip checkpoint in ``folder``."""
    origin = folder / "open_clip_config.json"
    model_cfg = config.get("model_cfg", config)
    vision = model_cfg.get("vision_cfg")
    if not isinstance(vision, dict):
        raise CheckpointFormatError(f"{origin} has no model_cfg.vision_cfg section")
    unsupported = [key for key in ("timm_model_name", "attentional_pool") if vision.get(key)]
    if unsupported:
        raise CheckpointFormatError(
            f"{origin}: open_clip vision towers with {unsupported} are not supported; supported is open_clip's "
            "own VisionTransformer (vision_cfg with layers/width/patch_size). For a timm trunk, load the timm "
            "model directly."
        )
    pool = vision.get("pool_type", "tok")
    if pool not in _POOL_TYPES:
        raise CheckpointFormatError(f"{origin}: vision_cfg.pool_type={pool!r} is not supported; supported: {sorted(_POOL_TYPES)}")
    source = load_tensors(folder, OPEN_CLIP_WEIGHT_FILES, keep=lambda key: key.startswith("visual."))
    if not source.tensors:
        raise CheckpointFormatError(f"{source.origin} has no 'visual.*' tensors; it is not an open_clip CLIP checkpoint")
    width = int(vision["width"])
    head_width = int(vision.get("head_width", 64))
    norm_eps = float((vision.get("norm_kwargs") or {}).get("eps", 1e-5))
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    projection = source.optional("visual.proj")
    ln_pre = None if vision.get("no_ln_pre", False) else (source.get("visual.ln_pre.weight"), source.get("visual.ln_pre.bias"))
    n_layers = source.count_indexed("visual.transformer.resblocks.")
    cfg = HookedViTConfig(
        n_layers=n_layers,
        d_model=width,
        n_heads=width // head_width,
        d_mlp=source.get("visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        image_size=vision.get("image_size", 224),
        patch_size=vision.get("patch_size", 16),
        act_fn=act,
        eps=norm_eps,
        ln_pre=ln_pre is not None,
        final_ln_after_pool=bool(vision.get("final_ln_after_pool", False)),
        patch_bias=False,
        pool_type=_POOL_TYPES[pool],
        head_type="linear" if projection is not None else "none",
        d_output=None if projection is None else projection.shape[1],
        model_name=config.get("hub_id", str(folder)),
        original_architecture="open_clip.VisionTransformer",
    )
    blocks = [_block(source, f"visual.transformer.resblocks.{layer}.") for layer in range(n_layers)]
    state = assemble_state_dict(
        cfg,
        patch_weight=source.get("visual.conv1.weight"),
        patch_bias=None,
        cls_token=source.get("visual.class_embedding"),
        register_tokens=None,
        pos_embed=source.get("visual.positional_embedding"),
        blocks=blocks,
        ln_pre=ln_pre,
        ln_final=(source.get("visual.ln_post.weight"), source.get("visual.ln_post.bias")),
        # open_clip multiplies by ``proj [width, embed_dim]``; the neutral layout is nn.Linear's [out, in].
        head_weight=None if projection is None else projection.T,
    )
    return cfg, state


def _block(source: TensorSource, p: str) -> BlockWeights:
    return fused_qkv_block(
        source, p, ln1="ln_1", qkv=("attn.in_proj_weight", "attn.in_proj_bias"), out="attn.out_proj", ln2="ln_2",
        fc1="mlp.c_fc", fc2="mlp.c_proj", layer_scales=("ls_1.gamma", "ls_2.gamma"),
    )
