"""Video transformers from transformers: ViViT (``VivitModel``), V-JEPA 2 (``VJEPA2Model``) and TimeSformer
(``TimesformerModel``), as HookedViTs reading ``[batch, frames, channels, height, width]``.

- ViViT: a 3-D patch embedding over tubelets, ``[CLS, tubelets in (time, row, column) order]`` plus one learned
  embedding per token, ViT blocks, a tanh pooler (or a classifier).
- V-JEPA 2: a 3-D patch embedding (a clip shorter than one tubelet is repeated), no CLS token and no position
  table: queries and keys are rotated in 3-D (``Rotary`` style ``"vjepa2"``). ``VJEPA2Model`` has no pooled
  output; here the patch mean stands in. The predictor (and a classifier's attentive pooler) are not loaded.
- TimeSformer: a 2-D patch embedding per frame, tokens in (row, column, time) order, a learned embedding per
  grid position plus one per frame, and divided space-time blocks (``attention_type="divided_space_time"``) or
  plain blocks over all tokens (``"joint_space_time"``).
"""

from __future__ import annotations

import logging

from torch import Tensor

from vit_sae_hooks.errors import CheckpointFormatError
from vit_sae_hooks.model.config import HookedViTConfig
from vit_sae_hooks.model.loading.convert import BlockWeights, TensorSource, assemble_state_dict, split_fused
from vit_sae_hooks.model.loading.hf_common import attention_tensors, vision_config, vit_block

logger = logging.getLogger(__name__)

VIVIT_ANCHOR = "embeddings.patch_embeddings.projection.weight"
VJEPA2_ANCHOR = "encoder.embeddings.patch_embeddings.proj.weight"
TIMESFORMER_ANCHOR = "embeddings.time_embeddings"


def _classifier(source: TensorSource) -> tuple[Tensor | None, Tensor | None]:
    return source.optional("classifier.weight"), source.optional("classifier.bias")


def load_vivit(
    source: TensorSource, prefix: str, config: dict, architecture: str, name: str
) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """The HookedViT config and state dict of a ViViT checkpoint whose keys start with ``prefix``.

    Example:
        >>> cfg, state = load_vivit(source, "", config, "VivitModel", "google/vivit-b-16x2-kinetics400")
    """
    patch_weight = source.get(f"{prefix}{VIVIT_ANCHOR}")
    frames_per_tubelet, *patch = patch_weight.shape[-3:]
    classifier, classifier_bias = _classifier(source)
    pooler = source.optional(f"{prefix}pooler.dense.weight")
    head_type, head_weight, head_bias = "none", None, None
    if classifier is not None:
        head_type, head_weight, head_bias = "linear", classifier, classifier_bias
    elif pooler is not None:
        head_type, head_weight, head_bias = "linear_tanh", pooler, source.optional(f"{prefix}pooler.dense.bias")
    n_layers = source.count_indexed(f"{prefix}encoder.layer.")
    cfg = vision_config(
        {**config, "patch_size": tuple(patch)}, n_layers=n_layers, default_act="gelu_fast", default_eps=1e-6,
        default_patch=16, name=name, architecture=architecture,
        n_frames=int(config.get("num_frames", 32)), tubelet_size=frames_per_tubelet,
        head_type=head_type, d_output=None if head_weight is None else head_weight.shape[0],
    )
    state = assemble_state_dict(
        cfg,
        patch_weight=patch_weight,
        patch_bias=source.optional(f"{prefix}embeddings.patch_embeddings.projection.bias"),
        cls_token=source.get(f"{prefix}embeddings.cls_token"),
        register_tokens=None,
        pos_embed=source.get(f"{prefix}embeddings.position_embeddings"),
        blocks=[vit_block(source, f"{prefix}encoder.layer.{layer}.") for layer in range(n_layers)],
        ln_pre=None,
        ln_final=(source.get(f"{prefix}layernorm.weight"), source.get(f"{prefix}layernorm.bias")),
        head_weight=head_weight,
        head_bias=head_bias,
    )
    return cfg, state


def load_vjepa2(
    source: TensorSource, prefix: str, config: dict, architecture: str, name: str
) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """The HookedViT config and state dict of a V-JEPA 2 encoder whose keys start with ``prefix``.

    Example:
        >>> cfg, state = load_vjepa2(source, "", config, "VJEPA2Model", "facebook/vjepa2-vitl-fpc64-256")
    """
    if source.optional("classifier.weight") is not None:
        logger.warning(
            "%s: the video classifier's attentive pooler is not loaded; the model outputs the mean patch token",
            source.origin,
        )
    encoder = f"{prefix}encoder."
    n_layers = source.count_indexed(f"{encoder}layer.")
    d_mlp = source.get(f"{encoder}layer.0.mlp.fc1.weight").shape[0]
    cfg = vision_config(
        {**config, "image_size": config.get("crop_size", 256), "num_channels": config.get("in_chans", 3)},
        n_layers=n_layers, default_act="gelu", default_eps=1e-6, default_patch=16, name=name,
        architecture=architecture, d_mlp=d_mlp,
        n_frames=int(config.get("frames_per_clip", 64)), tubelet_size=int(config.get("tubelet_size", 2)),
        repeat_short_clips=True, has_cls_token=False, pos_embed_prefix=0,
        positional_embedding_type="rotary", rotary_style="vjepa2", pool_type="mean",
    )
    blocks = []
    for layer in range(n_layers):
        p = f"{encoder}layer.{layer}."
        names = {"q": "query", "k": "key", "v": "value", "o": "proj"}
        blocks.append(BlockWeights(
            ln1_w=source.get(f"{p}norm1.weight"), ln1_b=source.get(f"{p}norm1.bias"),
            ln2_w=source.get(f"{p}norm2.weight"), ln2_b=source.get(f"{p}norm2.bias"),
            fc1_w=source.get(f"{p}mlp.fc1.weight"), fc1_b=source.optional(f"{p}mlp.fc1.bias"),
            fc2_w=source.get(f"{p}mlp.fc2.weight"), fc2_b=source.optional(f"{p}mlp.fc2.bias"),
            **attention_tensors(source, p, "attention.", names),
        ))
    state = assemble_state_dict(
        cfg,
        patch_weight=source.get(f"{prefix}{VJEPA2_ANCHOR}"),
        patch_bias=source.optional(f"{encoder}embeddings.patch_embeddings.proj.bias"),
        cls_token=None,
        register_tokens=None,
        pos_embed=None,
        blocks=blocks,
        ln_pre=None,
        ln_final=(source.get(f"{encoder}layernorm.weight"), source.get(f"{encoder}layernorm.bias")),
    )
    return cfg, state


def load_timesformer(
    source: TensorSource, prefix: str, config: dict, architecture: str, name: str
) -> tuple[HookedViTConfig, dict[str, Tensor]]:
    """The HookedViT config and state dict of a TimeSformer checkpoint whose keys start with ``prefix``.

    Example:
        >>> cfg, state = load_timesformer(source, "", config, "TimesformerModel", "facebook/timesformer-base-finetuned-k400")
    """
    attention_type = config.get("attention_type", "divided_space_time")
    if attention_type not in ("divided_space_time", "joint_space_time"):
        raise CheckpointFormatError(
            f"{source.origin}: TimeSformer attention_type={attention_type!r} is not supported; vit_sae_hooks loads "
            "'divided_space_time' and 'joint_space_time' (for 'space_only', each frame is an image)"
        )
    divided = attention_type == "divided_space_time"
    classifier, classifier_bias = _classifier(source)
    n_layers = source.count_indexed(f"{prefix}encoder.layer.")
    cfg = vision_config(
        config, n_layers=n_layers, default_act="gelu", default_eps=1e-6, default_patch=16, name=name,
        architecture=architecture,
        n_frames=int(config.get("num_frames", 8)), token_order="patch_major", time_embedding=True,
        attention_type="divided" if divided else "joint",
        head_type="none" if classifier is None else "linear",
        d_output=None if classifier is None else classifier.shape[0],
    )
    blocks = []
    for layer in range(n_layers):
        p = f"{prefix}encoder.layer.{layer}."
        block = vit_block(source, p)
        if divided:
            block.temporal = _temporal_attention(source, p)
        blocks.append(block)
    state = assemble_state_dict(
        cfg,
        # A 2-D patch embedding per frame is a 3-D one spanning one frame.
        patch_weight=source.get(f"{prefix}embeddings.patch_embeddings.projection.weight").unsqueeze(2),
        patch_bias=source.optional(f"{prefix}embeddings.patch_embeddings.projection.bias"),
        cls_token=source.get(f"{prefix}embeddings.cls_token"),
        register_tokens=None,
        pos_embed=source.get(f"{prefix}embeddings.position_embeddings"),
        time_embed=source.get(f"{prefix}{TIMESFORMER_ANCHOR}"),
        blocks=blocks,
        ln_pre=None,
        ln_final=(source.get(f"{prefix}layernorm.weight"), source.get(f"{prefix}layernorm.bias")),
        head_weight=classifier,
        head_bias=classifier_bias,
    )
    return cfg, state


def _temporal_attention(source: TensorSource, p: str) -> BlockWeights:
    """The temporal attention of a divided block, with TimeSformer's ``temporal_dense`` folded into its output
    projection: ``dense(out(z)) = z·(W_dense W_out)ᵀ + (W_dense b_out + b_dense)``."""
    attention = f"{p}temporal_attention."
    queries, keys, values = split_fused(
        source.get(f"{attention}attention.qkv.weight"), source.optional(f"{attention}attention.qkv.bias")
    )
    out_w, out_b = source.get(f"{attention}output.dense.weight"), source.optional(f"{attention}output.dense.bias")
    dense_w, dense_b = source.get(f"{p}temporal_dense.weight"), source.optional(f"{p}temporal_dense.bias")
    folded_b = (dense_w @ out_b if out_b is not None else 0) + (dense_b if dense_b is not None else 0)
    return BlockWeights(
        ln1_w=source.get(f"{p}temporal_layernorm.weight"), ln1_b=source.get(f"{p}temporal_layernorm.bias"),
        q_w=queries[0], q_b=queries[1], k_w=keys[0], k_b=keys[1], v_w=values[0], v_b=values[1],
        o_w=dense_w @ out_w, o_b=folded_b if isinstance(folded_b, Tensor) else None,
        ln2_w=None, ln2_b=None, fc1_w=None, fc1_b=None, fc2_w=None, fc2_b=None,
    )
