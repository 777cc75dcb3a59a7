"""What every transformers vision family's loader reads the same way: where the vision tower's tensors
start in a checkpoint, the config fields all families share, and the q/k/v/o tensors of an attention layer."""

from __future__ import annotations

from torch import Tensor

from vit_sae_hooks.errors import CheckpointFormatError
from vit_sae_hooks.model.config import HookedViTConfig
from vit_sae_hooks.model.loading.convert import BlockWeights, TensorSource, split_fused


def vision_prefix(source: TensorSource, family: str, anchor: str) -> str:
    """The key prefix of the vision tower in ``source``: the one holding ``anchor``, preferring a ``vision`` one."""
    # CLIPModel/SiglipModel also hold a text tower; the vision tower is the one named vision_model.
    matches = sorted(k[: -len(anchor)] for k in source.tensors if k.endswith(anchor))
    if not matches:
        raise CheckpointFormatError(
            f"{source.origin} has no {anchor!r} tensor, so it is not a {family} vision checkpoint"
        )
    vision = [m for m in matches if "vision" in m]
    return (vision or matches)[0]


def vision_config(
    vision: dict, *, n_layers: int, default_act: str, default_eps: float, default_patch: int, name: str,
    architecture: str, d_mlp: int | None = None, eps_key: str = "layer_norm_eps", **family: object,
) -> HookedViTConfig:
    """The HookedViTConfig of an HF vision tower: the fields every family reads the same way, plus ``family``'s own.

    Example:
        >>> cfg = vision_config(config, n_layers=12, default_act="gelu", default_eps=1e-6, default_patch=16,
        ...                     name="facebook/dinov2-small", architecture="Dinov2Model")
    """
    return HookedViTConfig(
        n_layers=n_layers,
        d_model=vision["hidden_size"],
        n_heads=vision["num_attention_heads"],
        d_mlp=vision["intermediate_size"] if d_mlp is None else d_mlp,
        image_size=vision.get("image_size", 224),
        patch_size=vision.get("patch_size", default_patch),
        n_channels=vision.get("num_channels", 3),
        act_fn=vision.get("hidden_act", default_act),
        eps=float(vision.get(eps_key, default_eps)),
        model_name=name,
        original_architecture=architecture,
        **family,
    )


def attention_tensors(source: TensorSource, p: str, attn: str, names: dict[str, str]) -> dict[str, Tensor | None]:
    """BlockWeights fields ``q_w, q_b, ...`` from ``{p}{attn}{name}.weight`` / ``.bias`` for each short name -> key."""
    out = {}
    for short, key in names.items():
        out[f"{short}_w"] = source.get(f"{p}{attn}{key}.weight")
        out[f"{short}_b"] = source.optional(f"{p}{attn}{key}.bias")
    return out


def vit_block(source: TensorSource, p: str, attention: str = "attention.attention.") -> BlockWeights:
    """A layer in transformers' ViT layout (ViT, DINO v1, ViViT, TimeSformer's spatial part): ``layernorm_before``,
    ``{attention}query/key/value`` (or a fused ``qkv``), ``attention.output.dense``, ``layernorm_after``,
    ``intermediate.dense``, ``output.dense``.

    Example:
        >>> block = vit_block(source, "encoder.layer.0.")
    """
    if f"{p}{attention}qkv.weight" in source:
        queries, keys, values = split_fused(source.get(f"{p}{attention}qkv.weight"), source.optional(f"{p}{attention}qkv.bias"))
        projections = dict(q_w=queries[0], q_b=queries[1], k_w=keys[0], k_b=keys[1], v_w=values[0], v_b=values[1])
    else:
        projections = attention_tensors(source, p, attention, {"q": "query", "k": "key", "v": "value"})
    return BlockWeights(
        ln1_w=source.get(f"{p}layernorm_before.weight"), ln1_b=source.get(f"{p}layernorm_before.bias"),
        o_w=source.get(f"{p}attention.output.dense.weight"), o_b=source.optional(f"{p}attention.output.dense.bias"),
        ln2_w=source.get(f"{p}layernorm_after.weight"), ln2_b=source.get(f"{p}layernorm_after.bias"),
        fc1_w=source.get(f"{p}intermediate.dense.weight"), fc1_b=source.optional(f"{p}intermediate.dense.bias"),
        fc2_w=source.get(f"{p}output.dense.weight"), fc2_b=source.optional(f"{p}output.dense.bias"),
        **projections,
    )
