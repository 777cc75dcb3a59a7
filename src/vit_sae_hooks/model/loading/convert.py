"""Turn checkpoint tensors in ``nn.Linear`` layout into HookedViT parameters: the one place conversions live.

Every format module maps its own key names to the neutral :class:`BlockWeights` (weights in
``[out, in]`` layout as ``nn.Linear`` stores them) and calls :func:`assemble_state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vit_sae_hooks.errors import CheckpointFormatError
from vit_sae_hooks.files import read_json
from vit_sae_hooks.model.config import HookedViTConfig


class TensorSource:
    """Reads named tensors from a checkpoint, with errors that name the file and the missing key."""

    def __init__(self, tensors: dict[str, Tensor], origin: str):
        self.tensors = tensors
        self.origin = origin

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def get(self, key: str) -> Tensor:
        """The tensor stored under ``key``; raises :class:`CheckpointFormatError` if absent."""
        if key not in self.tensors:
            nearby = sorted(k for k in self.tensors if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])[:5]
            raise CheckpointFormatError(
                f"{self.origin} has no tensor {key!r} (found {len(self.tensors)} tensors"
                + (f", e.g. {nearby}" if nearby else "")
                + "); the checkpoint is incomplete or not of the detected format"
            )
        return self.tensors[key]

    def optional(self, key: str) -> Tensor | None:
        """The tensor stored under ``key``, or None."""
        return self.tensors.get(key)

    def count_indexed(self, prefix: str) -> int:
        """How many consecutive ``{prefix}{i}.`` groups exist, e.g. the number of blocks."""
        count = 0
        while any(k.startswith(f"{prefix}{count}.") for k in self.tensors):
            count += 1
        return count


def load_tensors(folder: Path, candidates: Iterable[str], keep: Callable[[str], bool] = lambda key: True) -> TensorSource:
    """Read the first existing weight file among ``candidates`` (safetensors, sharded index, or a
    ``weights_only`` torch pickle), keeping only keys for which ``keep`` is true."""
    from safetensors import safe_open

    for name in candidates:
        path = folder / name
        if not path.exists():
            continue
        if name.endswith(".index.json"):
            shard_names = sorted(set(read_json(path).get("weight_map", {}).values()))
            files = [folder / shard for shard in shard_names]
        else:
            files = [path]
        tensors: dict[str, Tensor] = {}
        for file in files:
            try:
                if file.suffix == ".safetensors":
                    with safe_open(str(file), framework="pt") as handle:
                        for key in handle.keys():
                            if keep(key):
                                tensors[key] = handle.get_tensor(key)
                else:
                    state = torch.load(str(file), map_location="cpu", weights_only=True)
                    state = state.get("state_dict", state) if isinstance(state, dict) else state
                    if not isinstance(state, dict):
                        raise CheckpointFormatError(f"{file} does not hold a state dict")
                    tensors.update({k: v for k, v in state.items() if keep(k) and isinstance(v, Tensor)})
            except CheckpointFormatError:
                raise
            except Exception as error:
                raise CheckpointFormatError(
                    f"cannot read weights from {file}: {type(error).__name__}: {error}. The file is "
                    "corrupt, truncated or not a weight file; download it again."
                ) from error
        return TensorSource(tensors, str(path))
    raise CheckpointFormatError(
        f"{folder} has none of the weight files {list(candidates)}; found {sorted(p.name for p in folder.iterdir())}"
    )


@dataclass
class BlockWeights:
    """One transformer block's tensors in ``nn.Linear`` layout (``weight [out, in]``); a pooling head without
    norms or MLP (``pool_type="attention"``) leaves those fields None, as RMSNorms leave their biases."""

    ln1_w: Tensor | None
    ln1_b: Tensor | None
    q_w: Tensor
    q_b: Tensor | None
    k_w: Tensor
    k_b: Tensor | None
    v_w: Tensor
    v_b: Tensor | None
    o_w: Tensor
    o_b: Tensor | None
    ln2_w: Tensor | None
    ln2_b: Tensor | None
    fc1_w: Tensor | None
    fc1_b: Tensor | None
    fc2_w: Tensor | None
    fc2_b: Tensor | None
    layer_scale_attn: Tensor | None = None
    layer_scale_mlp: Tensor | None = None
    gate_w: Tensor | None = None
    gate_b: Tensor | None = None
    # A divided space-time block's temporal attention (TimeSformer): its norm in ln1, attention in q/k/v/o.
    temporal: BlockWeights | None = None


def split_fused(weight: Tensor, bias: Tensor | None, parts: int = 3) -> list[tuple[Tensor, Tensor | None]]:
    """Split a fused projection (``in_proj_weight`` / timm ``qkv``) into ``parts`` equal chunks."""
    weights = weight.chunk(parts, dim=0)
    biases = bias.chunk(parts, dim=0) if bias is not None else [None] * parts
    return list(zip(weights, biases, strict=True))


def fused_qkv_block(
    source: TensorSource, prefix: str, *, ln1: str, qkv: tuple[str, str], out: str, ln2: str, fc1: str, fc2: str,
    layer_scales: tuple[str, str],
) -> BlockWeights:
    """A block whose queries, keys and values share one projection (open_clip's ``in_proj``, timm's ``qkv``).

    ``qkv`` names the fused weight and bias; the other names are modules with ``.weight``/``.bias``;
    ``layer_scales`` the optional attention and MLP layer-scale vectors.
    """
    (q_w, q_b), (k_w, k_b), (v_w, v_b) = split_fused(source.get(prefix + qkv[0]), source.optional(prefix + qkv[1]))
    return BlockWeights(
        ln1_w=source.get(f"{prefix}{ln1}.weight"), ln1_b=source.get(f"{prefix}{ln1}.bias"),
        q_w=q_w, q_b=q_b, k_w=k_w, k_b=k_b, v_w=v_w, v_b=v_b,
        o_w=source.get(f"{prefix}{out}.weight"), o_b=source.optional(f"{prefix}{out}.bias"),
        ln2_w=source.get(f"{prefix}{ln2}.weight"), ln2_b=source.get(f"{prefix}{ln2}.bias"),
        fc1_w=source.get(f"{prefix}{fc1}.weight"), fc1_b=source.optional(f"{prefix}{fc1}.bias"),
        fc2_w=source.get(f"{prefix}{fc2}.weight"), fc2_b=source.optional(f"{prefix}{fc2}.bias"),
        layer_scale_attn=source.optional(prefix + layer_scales[0]),
        layer_scale_mlp=source.optional(prefix + layer_scales[1]),
    )


def _zeros_if_none(bias: Tensor | None, size: int, like: Tensor) -> Tensor:
    return torch.zeros(size, dtype=like.dtype) if bias is None else bias


def _attention_params(cfg: HookedViTConfig, prefix: str, w: BlockWeights) -> dict[str, Tensor]:
    n_heads, d_head, d_model = cfg.n_heads, cfg.d_head, cfg.d_model
    params: dict[str, Tensor] = {}
    for name, weight, bias in (("Q", w.q_w, w.q_b), ("K", w.k_w, w.k_b), ("V", w.v_w, w.v_b)):
        params[f"{prefix}.W_{name}"] = weight.T.reshape(d_model, n_heads, d_head).permute(1, 0, 2)
        params[f"{prefix}.b_{name}"] = _zeros_if_none(bias, n_heads * d_head, weight).reshape(n_heads, d_head)
    W_O = w.o_w.T.reshape(n_heads, d_head, d_model)
    b_O = _zeros_if_none(w.o_b, d_model, w.o_w)
    # Layer scale multiplies a sublayer's output; folding it into the output projection leaves
    # hook_attn_out / hook_mlp_out unchanged and saves a multiply per block.
    if w.layer_scale_attn is not None:
        W_O, b_O = W_O * w.layer_scale_attn, b_O * w.layer_scale_attn
    params[f"{prefix}.W_O"], params[f"{prefix}.b_O"] = W_O, b_O
    return params


def _mlp_params(cfg: HookedViTConfig, prefix: str, w: BlockWeights) -> dict[str, Tensor]:
    W_out = w.fc2_w.T
    b_out = _zeros_if_none(w.fc2_b, cfg.d_model, w.fc2_w)
    if w.layer_scale_mlp is not None:
        W_out, b_out = W_out * w.layer_scale_mlp, b_out * w.layer_scale_mlp
    params = {
        f"{prefix}.W_in": w.fc1_w.T,
        f"{prefix}.b_in": _zeros_if_none(w.fc1_b, cfg.d_mlp, w.fc1_w),
        f"{prefix}.W_out": W_out,
        f"{prefix}.b_out": b_out,
    }
    if cfg.mlp_type in ("swiglu", "gated"):
        params[f"{prefix}.W_gate"] = w.gate_w.T
        params[f"{prefix}.b_gate"] = _zeros_if_none(w.gate_b, cfg.d_mlp, w.gate_w)
    return params


def _block_params(cfg: HookedViTConfig, prefix: str, w: BlockWeights) -> dict[str, Tensor]:
    params = {
        **_norm_params(cfg, f"{prefix}.ln1", (w.ln1_w, w.ln1_b)),
        **_attention_params(cfg, f"{prefix}.attn", w),
        **_norm_params(cfg, f"{prefix}.ln2", (w.ln2_w, w.ln2_b)),
        **_mlp_params(cfg, f"{prefix}.mlp", w),
    }
    if w.temporal is not None:
        params.update(_norm_params(cfg, f"{prefix}.temporal_ln", (w.temporal.ln1_w, w.temporal.ln1_b)))
        params.update(_attention_params(cfg, f"{prefix}.temporal_attn", w.temporal))
    return params


def _norm_params(cfg: HookedViTConfig, name: str, norm: tuple[Tensor, Tensor | None]) -> dict[str, Tensor]:
    """A norm's parameters: weight and bias for LayerNorm, weight only for RMSNorm."""
    weight, bias = norm
    if cfg.normalization_type == "RMS":
        return {f"{name}.w": weight}
    return {f"{name}.w": weight, f"{name}.b": _zeros_if_none(bias, weight.shape[0], weight)}


def assemble_state_dict(
    cfg: HookedViTConfig,
    *,
    patch_weight: Tensor,
    patch_bias: Tensor | None,
    cls_token: Tensor | None,
    register_tokens: Tensor | None,
    pos_embed: Tensor | None,
    blocks: list[BlockWeights],
    ln_pre: tuple[Tensor, Tensor | None] | None,
    ln_final: tuple[Tensor, Tensor | None] | None,
    head_weight: Tensor | None = None,
    head_bias: Tensor | None = None,
    map_pool: dict[str, Tensor] | None = None,
    patch_norm: tuple[Tensor, Tensor | None] | None = None,
    time_embed: Tensor | None = None,
) -> dict[str, Tensor]:
    """The complete HookedViT state dict from format-neutral pieces.

    ``head_weight`` is ``[d_output, d_model]`` (``nn.Linear`` layout); ``map_pool`` holds the
    attention-pooling head as ``{"probe": [d_model], "block": BlockWeights}`` with the head's
    LayerNorm in ``ln2_w``/``ln2_b`` (``ln1`` is unused; a head without LayerNorm and MLP, as
    ``pool_type="attention"`` has, leaves them and ``fc*`` out). ``pos_embed`` is None for models without a
    learned position table; norms are ``(weight, bias)`` pairs (bias None for RMSNorm); ``time_embed`` is
    TimeSformer's embedding per frame ``[frames, d_model]``.
    """
    state: dict[str, Tensor] = {"embed.W_patch": patch_weight}
    if pos_embed is not None:
        state["embed.pos_embed"] = pos_embed.reshape(-1, cfg.d_model)
    if patch_bias is not None:
        state["embed.b_patch"] = patch_bias
    if patch_norm is not None:
        state.update(_norm_params(cfg, "embed.ln_patch", patch_norm))
    if time_embed is not None:
        state["embed.time_embed"] = time_embed.reshape(-1, cfg.d_model)
    if cls_token is not None:
        state["embed.cls_token"] = cls_token.reshape(cfg.d_model)
    if register_tokens is not None:
        state["embed.register_tokens"] = register_tokens.reshape(-1, cfg.d_model)
    if ln_pre is not None:
        state.update(_norm_params(cfg, "ln_pre", ln_pre))
    for index, block in enumerate(blocks):
        state.update(_block_params(cfg, f"blocks.{index}", block))
    if ln_final is not None:
        state.update(_norm_params(cfg, "ln_final", ln_final))
    if head_weight is not None:
        state["head.W"] = head_weight.T
        state["head.b"] = _zeros_if_none(head_bias, head_weight.shape[0], head_weight)
    if map_pool is not None:
        # The MAP head is a block without ln1: its attention and MLP convert like a block's, and
        # its single LayerNorm travels in the ln2 slot.
        head_block: BlockWeights = map_pool["block"]
        state.update(_attention_params(cfg, "pool.attn", head_block))
        if cfg.pool_type == "map":
            state.update(_norm_params(cfg, "pool.ln", (head_block.ln2_w, head_block.ln2_b)))
            state.update(_mlp_params(cfg, "pool.mlp", head_block))
        state["pool.probe"] = map_pool["probe"].reshape(cfg.d_model)
    return {name: tensor.contiguous() for name, tensor in state.items()}


def check_state_dict(expected: dict[str, Tensor], state: dict[str, Tensor], origin: str) -> None:
    """Raise a :class:`CheckpointFormatError` naming ``origin`` and the keys unless ``state`` has exactly the
    parameters of ``expected`` with their shapes, as finite floating-point tensors.

    Every problem is reported at once; nothing is loaded when there is one.

    Example:
        >>> check_state_dict(model.state_dict(), state, "my_model/model.safetensors")
    """
    problems = []
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing parameters {missing[:8]}")
    if unexpected:
        problems.append(f"unexpected parameters {unexpected[:8]}")
    for name in sorted(set(expected) & set(state)):
        tensor, wanted = state[name], expected[name]
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            problems.append(f"{name!r} is {getattr(tensor, 'dtype', type(tensor).__name__)}, not a floating-point tensor")
        elif tuple(tensor.shape) != tuple(wanted.shape):
            problems.append(f"{name!r} has shape {list(tensor.shape)}, the config needs {list(wanted.shape)}")
        elif not bool(torch.isfinite(tensor).all()):
            problems.append(f"{name!r} holds NaN or infinite values")
    if problems:
        raise CheckpointFormatError(
            f"{origin} does not match its config: " + "; ".join(problems[:8]) + ". The checkpoint is damaged or "
            "its config belongs to other weights; download it again."
        )
