"""Hugging Face transformers checkpoints: CLIP, ViT (incl. DINO v1), DINOv2 (with registers) and SigLIP."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor

from vit_sae_hooks.errors import CheckpointFormatError
from vit_sae_hooks.model.config import HookedViTConfig
from vit_sae_hooks.model.loading.convert import (
    BlockWeights,
    TensorSource,
    assemble_state_dict,
    load_tensors,
    split_fused,
)

logger = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

# model_type -> (family, whether the vision settings sit in a nested ``vision_config``)
SUPPORTED_MODEL_TYPES = {
    "clip": ("clip", True),
    "clip_vision_model": ("clip", False),
    "vit": ("vit", False),
    "dinov2": ("dinov2", False),
    "dinov2_with_registers": ("dinov2", False),
    "siglip": ("siglip", True),
    "siglip_vision_model": ("siglip", False),
}

# The key every family's vision tower has, used to find the prefix the checkpoint puts before it.
_ANCHOR_KEYS = {
    "clip": "embeddings.patch_embedding.weight",
    "siglip": "embeddings.patch_embedding.weight",
    "vit": "embeddings.patch_embeddings.projection.weight",
    "dinov2": "embeddings.patch_embeddings.projection.weight",
}


def _vision_prefix(source: TensorSource, family: str) -> str:
    anchor = _ANCHOR_KEYS[family]
    # CLIPModel/SiglipModel also hold a text tower; the vision tower is the one named vision_model.
    matches = sorted(k[: -len(anchor)] for k in source.tensors if k.endswith(anchor))
    if not matches:
        raise CheckpointFormatError(
            f"{source.origin} has no {anchor!r} tensor, so it is not a {family} vision checkpoint"
        )
    vision = [m for m in matches if "vision" in m]
    return (vision or matches)[0]


def _vision_config(
    vision: dict, *, n_layers: int, default_act: str, default_eps: float, default_patch: int, name: str,
    architecture: str, d_mlp: int | None = None, **family: object,
) -> HookedViTConfig:
    """The HookedViTConfig of an HF vision tower: the fields every family reads the same way, plus ``family``'s own."""
    return HookedViTConfig(
        n_layers=n_layers,
        d_model=vision["hidden_size"],
        n_heads=vision["num_attention_heads"],
        d_mlp=vision["intermediate_size"] if d_mlp is None else d_mlp,
        image_size=vision.get("image_size", 224),
        patch_size=vision.get("patch_size", default_patch),
        n_channels=vision.get("num_channels", 3),
        act_fn=vision.get("hidden_act", default_act),
        eps=float(vision.get("layer_norm_eps", default_eps)),
        model_name=name,
        original_architecture=architecture,
        **family,
    )


def load_hf(folder: Path, config: dict) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """Convert a transformers vision checkpoint in ``folder`` (its ``config.json`` already parsed)."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointFormatError(
            f"{folder / 'config.json'} has model_type={model_type!r}; supported transformers model types: "
            f"{sorted(SUPPORTED_MODEL_TYPES)}"
        )
    family, nested = SUPPORTED_MODEL_TYPES[model_type]
    vision = config.get("vision_config", {}) if nested else config
    # Only the vision tower (and projection) is read, so a full CLIPModel costs no text-tower memory.
    source = load_tensors(folder, HF_WEIGHT_FILES, keep=lambda key: not key.startswith(("text_model.", "text_projection")))
    prefix = _vision_prefix(source, family)
    architectures = config.get("architectures") or [model_type]
    name = config.get("_name_or_path") or str(folder)
    if family == "clip":
        return _load_clip(source, prefix, vision, config, architectures[0], name)
    if family == "siglip":
        return _load_siglip(source, prefix, vision, architectures[0], name)
    return _load_vit_like(source, prefix, vision, family, model_type, architectures[0], name)


def _attention_block(source: TensorSource, p: str, attn: str, names: dict[str, str]) -> dict[str, Tensor | None]:
    out = {}
    for short, key in names.items():
        out[f"{short}_w"] = source.get(f"{p}{attn}{key}.weight")
        out[f"{short}_b"] = source.optional(f"{p}{attn}{key}.bias")
    return out


def _load_clip(source, prefix, vision, config, architecture, name):
    projection = source.optional("visual_projection.weight")
    n_layers = source.count_indexed(f"{prefix}encoder.layers.")
    cfg = _vision_config(
        vision, n_layers=n_layers, default_act="quick_gelu", default_eps=1e-5, default_patch=32, name=name,
        architecture=architecture,
        ln_pre=True,
        patch_bias=False,
        pool_type="cls",
        head_type="linear" if projection is not None else "none",
        d_output=projection.shape[0] if projection is not None else None,
    )
    blocks = []
    for layer in range(n_layers):
        p = f"{prefix}encoder.layers.{layer}."
        blocks.append(_clip_style_block(source, p))
    state = assemble_state_dict(
        cfg,
        patch_weight=source.get(f"{prefix}embeddings.patch_embedding.weight"),
        patch_bias=None,
        cls_token=source.get(f"{prefix}embeddings.class_embedding"),
        register_tokens=None,
        pos_embed=source.get(f"{prefix}embeddings.position_embedding.weight"),
        blocks=blocks,
        ln_pre=(source.get(f"{prefix}pre_layrnorm.weight"), source.get(f"{prefix}pre_layrnorm.bias")),
        ln_final=(source.get(f"{prefix}post_layernorm.weight"), source.get(f"{prefix}post_layernorm.bias")),
        head_weight=projection,
    )
    return cfg, state


def _clip_style_block(source: TensorSource, p: str) -> BlockWeights:
    """A CLIP/SigLIP encoder layer: ``self_attn.{q,k,v,out}_proj``, ``layer_norm{1,2}``, ``mlp.fc{1,2}``."""
    attn = _attention_block(source, p, "self_attn.", {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"})
    return BlockWeights(
        ln1_w=source.get(f"{p}layer_norm1.weight"),
        ln1_b=source.get(f"{p}layer_norm1.bias"),
        ln2_w=source.get(f"{p}layer_norm2.weight"),
        ln2_b=source.get(f"{p}layer_norm2.bias"),
        fc1_w=source.get(f"{p}mlp.fc1.weight"),
        fc1_b=source.optional(f"{p}mlp.fc1.bias"),
        fc2_w=source.get(f"{p}mlp.fc2.weight"),
        fc2_b=source.optional(f"{p}mlp.fc2.bias"),
        **attn,
    )


def _load_siglip(source, prefix, vision, architecture, name):
    n_layers = source.count_indexed(f"{prefix}encoder.layers.")
    use_head = vision.get("vision_use_head", True) and f"{prefix}head.probe" in source
    patch_bias = source.optional(f"{prefix}embeddings.patch_embedding.bias")
    cfg = _vision_config(
        vision, n_layers=n_layers, default_act="gelu_pytorch_tanh", default_eps=1e-6, default_patch=16, name=name,
        architecture=architecture,
        patch_bias=patch_bias is not None,
        has_cls_token=False,
        pos_embed_prefix=0,
        # Without its attention-pooling head a SigLIP tower has no pooled output; the patch mean stands in.
        pool_type="map" if use_head else "mean",
    )
    blocks = [_clip_style_block(source, f"{prefix}encoder.layers.{layer}.") for layer in range(n_layers)]
    map_pool = None
    if use_head:
        h = f"{prefix}head."
        q, k, v = split_fused(source.get(f"{h}attention.in_proj_weight"), source.get(f"{h}attention.in_proj_bias"))
        head_block = BlockWeights(
            ln1_w=source.get(f"{h}layernorm.weight"),
            ln1_b=source.get(f"{h}layernorm.bias"),
            q_w=q[0], q_b=q[1], k_w=k[0], k_b=k[1], v_w=v[0], v_b=v[1],
            o_w=source.get(f"{h}attention.out_proj.weight"),
            o_b=source.get(f"{h}attention.out_proj.bias"),
            ln2_w=source.get(f"{h}layernorm.weight"),
            ln2_b=source.get(f"{h}layernorm.bias"),
            fc1_w=source.get(f"{h}mlp.fc1.weight"),
            fc1_b=source.get(f"{h}mlp.fc1.bias"),
            fc2_w=source.get(f"{h}mlp.fc2.weight"),
            fc2_b=source.get(f"{h}mlp.fc2.bias"),
        )
        map_pool = {"probe": source.get(f"{h}probe"), "block": head_block}
    state = assemble_state_dict(
        cfg,
        patch_weight=source.get(f"{prefix}embeddings.patch_embedding.weight"),
        patch_bias=patch_bias,
        cls_token=None,
        register_tokens=None,
        pos_embed=source.get(f"{prefix}embeddings.position_embedding.weight"),
        blocks=blocks,
        ln_pre=None,
        ln_final=(source.get(f"{prefix}post_layernorm.weight"), source.get(f"{prefix}post_layernorm.bias")),
        map_pool=map_pool,
    )
    return cfg, state


def _load_vit_like(source, prefix, vision, family, model_type, architecture, name):
    """HF ``ViTModel``/``ViTForImageClassification`` (DINO v1 too) and ``Dinov2Model`` (with registers)."""
    is_dinov2 = family == "dinov2"
    n_layers = source.count_indexed(f"{prefix}encoder.layer.")
    swiglu = bool(vision.get("use_swiglu_ffn", False))
    d_mlp = _vit_like_mlp(source, f"{prefix}encoder.layer.0.", is_dinov2, swiglu)["fc1_w"].shape[0]
    registers = source.optional(f"{prefix}embeddings.register_tokens")
    patch_bias = source.optional(f"{prefix}embeddings.patch_embeddings.projection.bias")
    classifier = source.optional("classifier.weight")
    pooler = source.optional(f"{prefix}pooler.dense.weight")
    head_type, head_weight, head_bias = "none", None, None
    if classifier is not None and not is_dinov2:
        head_type, head_weight, head_bias = "linear", classifier, source.optional("classifier.bias")
    elif classifier is not None:
        logger.warning(
            "%s: the Dinov2ForImageClassification classifier reads [CLS, mean patch] and is not loaded; "
            "the model outputs the pooled CLS vector", source.origin
        )
    elif pooler is not None:
        head_type, head_weight, head_bias = "linear_tanh", pooler, source.optional(f"{prefix}pooler.dense.bias")
    cfg = _vision_config(
        vision, n_layers=n_layers, default_act="gelu", default_eps=1e-6 if is_dinov2 else 1e-12, default_patch=16,
        name=name, architecture=architecture, d_mlp=d_mlp,
        mlp_type="swiglu" if swiglu else "standard",
        patch_bias=patch_bias is not None,
        n_register_tokens=0 if registers is None else registers.shape[-2],
        pos_embed_prefix=1,
        interpolate_pos_embed=is_dinov2,
        # transformers resamples with antialiasing for DINOv2-with-registers only.
        interpolate_antialias=model_type == "dinov2_with_registers",
        pool_type="cls",
        head_type=head_type,
        d_output=None if head_weight is None else head_weight.shape[0],
    )
    blocks = []
    for layer in range(n_layers):
        p = f"{prefix}encoder.layer.{layer}."
        attn = _attention_block(
            source, p, "attention.", {"q": "attention.query", "k": "attention.key", "v": "attention.value", "o": "output.dense"}
        )
        mlp = _vit_like_mlp(source, p, is_dinov2, swiglu)
        if is_dinov2:
            norms = dict(ln1_w=source.get(f"{p}norm1.weight"), ln1_b=source.get(f"{p}norm1.bias"),
                         ln2_w=source.get(f"{p}norm2.weight"), ln2_b=source.get(f"{p}norm2.bias"),
                         layer_scale_attn=source.get(f"{p}layer_scale1.lambda1"),
                         layer_scale_mlp=source.get(f"{p}layer_scale2.lambda1"))
        else:
            norms = dict(ln1_w=source.get(f"{p}layernorm_before.weight"), ln1_b=source.get(f"{p}layernorm_before.bias"),
                         ln2_w=source.get(f"{p}layernorm_after.weight"), ln2_b=source.get(f"{p}layernorm_after.bias"))
        blocks.append(BlockWeights(**attn, **mlp, **norms))
    state = assemble_state_dict(
        cfg,
        patch_weight=source.get(f"{prefix}embeddings.patch_embeddings.projection.weight"),
        patch_bias=patch_bias,
        cls_token=source.get(f"{prefix}embeddings.cls_token"),
        register_tokens=registers,
        pos_embed=source.get(f"{prefix}embeddings.position_embeddings"),
        blocks=blocks,
        ln_pre=None,
        ln_final=(source.get(f"{prefix}layernorm.weight"), source.get(f"{prefix}layernorm.bias")),
        head_weight=head_weight,
        head_bias=head_bias,
    )
    return cfg, state


def _vit_like_mlp(source: TensorSource, p: str, is_dinov2: bool, swiglu: bool) -> dict[str, Tensor | None]:
    """The MLP of a ViT/DINOv2 layer as BlockWeights fields (``fc1`` is the linear branch of a SwiGLU)."""
    if not is_dinov2:
        return dict(fc1_w=source.get(f"{p}intermediate.dense.weight"), fc1_b=source.optional(f"{p}intermediate.dense.bias"),
                    fc2_w=source.get(f"{p}output.dense.weight"), fc2_b=source.optional(f"{p}output.dense.bias"))
    if not swiglu:
        return dict(fc1_w=source.get(f"{p}mlp.fc1.weight"), fc1_b=source.optional(f"{p}mlp.fc1.bias"),
                    fc2_w=source.get(f"{p}mlp.fc2.weight"), fc2_b=source.optional(f"{p}mlp.fc2.bias"))
    if f"{p}mlp.weights_in.weight" in source:
        # The original DINOv2 layout fuses [gate; linear] into one projection.
        (gate_w, gate_b), (up_w, up_b) = split_fused(source.get(f"{p}mlp.weights_in.weight"),
                                                     source.optional(f"{p}mlp.weights_in.bias"), parts=2)
        down = "weights_out"
    else:
        gate_w, gate_b = source.get(f"{p}mlp.gate_proj.weight"), source.optional(f"{p}mlp.gate_proj.bias")
        up_w, up_b = source.get(f"{p}mlp.up_proj.weight"), source.optional(f"{p}mlp.up_proj.bias")
        down = "down_proj"
    return dict(fc1_w=up_w, fc1_b=up_b, gate_w=gate_w, gate_b=gate_b,
                fc2_w=source.get(f"{p}mlp.{down}.weight"), fc2_b=source.optional(f"{p}mlp.{down}.bias"))
