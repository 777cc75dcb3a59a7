"""Hugging Face transformers checkpoints: CLIP, ViT (incl. DINO v1), DINOv2 (with registers) and SigLIP."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from torch import Tensor

from vit_sae_hooks.errors import CheckpointFormatError
from vit_sae_hooks.model.config import HookedViTConfig
from vit_sae_hooks.model.loading.aimv2 import ANCHOR as AIMV2_ANCHOR
from vit_sae_hooks.model.loading.aimv2 import load_aimv2
from vit_sae_hooks.model.loading.convert import (
    BlockWeights,
    TensorSource,
    assemble_state_dict,
    load_tensors,
    split_fused,
)
from vit_sae_hooks.model.loading.dinov3 import ANCHOR as DINOV3_ANCHOR
from vit_sae_hooks.model.loading.dinov3 import load_dinov3
from vit_sae_hooks.model.loading.hf_common import attention_tensors, vision_config, vision_prefix, vit_block
from vit_sae_hooks.model.loading.video import (
    TIMESFORMER_ANCHOR,
    VIVIT_ANCHOR,
    VJEPA2_ANCHOR,
    load_timesformer,
    load_vivit,
    load_vjepa2,
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
    "siglip2": ("siglip", True),
    "siglip2_vision_model": ("siglip", False),
    # MetaCLIP 2 is CLIP's architecture trained on other data.
    "metaclip_2": ("clip", True),
    "metaclip_2_vision_model": ("clip", False),
    "dinov3_vit": ("dinov3", False),
    "aimv2": ("aimv2", True),
    "aimv2_vision_model": ("aimv2", False),
    "vivit": ("vivit", False),
    "vjepa2": ("vjepa2", False),
    "timesformer": ("timesformer", False),
}

# The key every family's vision tower has, used to find the prefix the checkpoint puts before it.
_ANCHOR_KEYS = {
    "clip": "embeddings.patch_embedding.weight",
    "siglip": "embeddings.patch_embedding.weight",
    "vit": "embeddings.patch_embeddings.projection.weight",
    "dinov2": "embeddings.patch_embeddings.projection.weight",
    "dinov3": DINOV3_ANCHOR,
    "aimv2": AIMV2_ANCHOR,
    "vivit": VIVIT_ANCHOR,
    "vjepa2": VJEPA2_ANCHOR,
    "timesformer": TIMESFORMER_ANCHOR,
}
_FAMILY_LOADERS = {
    "dinov3": load_dinov3, "aimv2": load_aimv2, "vivit": load_vivit, "vjepa2": load_vjepa2, "timesformer": load_timesformer,
}


def load_hf(folder: Path, config: dict) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """Convert a transformers vision checkpoint in ``folder`` (its ``config.json`` already parsed)."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        found = ", ".join(map(str, config.get("architectures") or [])) or "no architectures entry"
        raise CheckpointFormatError(
            f"{folder / 'config.json'} is a transformers checkpoint of model_type={model_type!r} ({found}), which "
            f"vit_sae_hooks does not load; supported model types: {sorted(SUPPORTED_MODEL_TYPES)}"
        )
    family, nested = SUPPORTED_MODEL_TYPES[model_type]
    vision = config.get("vision_config", {}) if nested else config
    # Only the vision tower (and projection) is read, so a full CLIPModel costs no text-tower memory (nor
    # V-JEPA 2's predictor).
    skipped = ("text_model.", "text_projection", "predictor.", "vjepa2.predictor.")
    source = load_tensors(folder, HF_WEIGHT_FILES, keep=lambda key: not key.startswith(skipped))
    prefix = vision_prefix(source, family, _ANCHOR_KEYS[family])
    architectures = config.get("architectures") or [model_type]
    name = config.get("_name_or_path") or str(folder)
    if family in _FAMILY_LOADERS:
        return _FAMILY_LOADERS[family](source, prefix, vision, architectures[0], name)
    if family == "clip":
        return _load_clip(source, prefix, vision, config, architectures[0], name)
    if family == "siglip":
        return _load_siglip(source, prefix, vision, architectures[0], name)
    return _load_vit_like(source, prefix, vision, family, model_type, architectures[0], name)


def _load_clip(source, prefix, vision, config, architecture, name):
    projection = source.optional("visual_projection.weight")
    n_layers = source.count_indexed(f"{prefix}encoder.layers.")
    cfg = vision_config(
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
    attn = attention_tensors(source, p, "self_attn.", {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"})
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
    """SigLIP, and SigLIP 2 NaFlex: a linear patch embedding over (row, column, channel)-ordered patches,
    which is the convolution with the weights reordered, and a square position grid resampled (bilinear,
    antialiased) to each image's grid."""
    n_layers = source.count_indexed(f"{prefix}encoder.layers.")
    use_head = vision.get("vision_use_head", True) and f"{prefix}head.probe" in source
    patch_weight = source.get(f"{prefix}embeddings.patch_embedding.weight")
    patch_bias = source.optional(f"{prefix}embeddings.patch_embedding.bias")
    naflex = patch_weight.ndim == 2
    family: dict = {}
    if naflex:
        patch = int(vision.get("patch_size", 16))
        channels = int(vision.get("num_channels", 3))
        patch_weight = patch_weight.reshape(patch_weight.shape[0], patch, patch, channels).permute(0, 3, 1, 2)
        side = math.isqrt(int(vision.get("num_patches", 256)))
        family = dict(image_size=side * patch, naflex=True, interpolate_pos_embed=True, interpolate_mode="bilinear",
                      interpolate_antialias=True)
    cfg = vision_config(
        {**vision, **({"image_size": family.pop("image_size")} if naflex else {})},
        n_layers=n_layers, default_act="gelu_pytorch_tanh", default_eps=1e-6, default_patch=16, name=name,
        architecture=architecture,
        patch_bias=patch_bias is not None,
        has_cls_token=False,
        pos_embed_prefix=0,
        # Without its attention-pooling head a SigLIP tower has no pooled output; the patch mean stands in.
        pool_type="map" if use_head else "mean",
        **family,
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
        patch_weight=patch_weight,
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


def _class_names(config: dict, n_classes: int) -> dict[str, list[str]]:
    """``{"class_names": [...]}`` from a classifier's ``id2label``, when it names every output."""
    labels = config.get("id2label") or {}
    names = [labels.get(str(i), labels.get(i)) for i in range(n_classes)]
    return {"class_names": names} if all(isinstance(name, str) for name in names) else {}


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
    cfg = vision_config(
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
    if head_type == "linear":
        cfg.extra.update(_class_names(vision, head_weight.shape[0]))
    blocks = []
    for layer in range(n_layers):
        p = f"{prefix}encoder.layer.{layer}."
        if not is_dinov2:
            blocks.append(vit_block(source, p))
            continue
        attn = attention_tensors(
            source, p, "attention.", {"q": "attention.query", "k": "attention.key", "v": "attention.value", "o": "output.dense"}
        )
        norms = dict(ln1_w=source.get(f"{p}norm1.weight"), ln1_b=source.get(f"{p}norm1.bias"),
                     ln2_w=source.get(f"{p}norm2.weight"), ln2_b=source.get(f"{p}norm2.bias"),
                     layer_scale_attn=source.get(f"{p}layer_scale1.lambda1"),
                     layer_scale_mlp=source.get(f"{p}layer_scale2.lambda1"))
        blocks.append(BlockWeights(**attn, **_vit_like_mlp(source, p, is_dinov2, swiglu), **norms))
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
