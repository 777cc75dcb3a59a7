"""The configuration of a hooked vision transformer, with the fields TransformerLens reads."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from vit_sae_hooks.checks import config_from_dict, finite_number, is_int, non_negative_int, positive_int
from vit_sae_hooks.errors import ConfigError

ActFn = Literal["gelu", "quick_gelu", "gelu_tanh", "relu", "silu"]
PoolType = Literal["cls", "mean", "map", "attention"]
HeadType = Literal["none", "linear", "linear_tanh"]
MlpType = Literal["standard", "swiglu", "gated"]
NormalizationType = Literal["LN", "RMS"]
PositionalEmbeddingType = Literal["standard", "rotary", "sincos"]
RotaryStyle = Literal["dinov3", "vjepa2"]
InterpolateMode = Literal["bicubic", "bilinear"]
TokenOrder = Literal["frame_major", "patch_major"]
AttentionType = Literal["joint", "divided"]

_ACT_FN_ALIASES = {
    "gelu": "gelu",
    "quick_gelu": "quick_gelu",
    "quickgelu": "quick_gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def normalise_act_fn(name: str) -> str:
    """Map an activation name from HF, timm or open_clip to one of :data:`ActFn`."""
    key = name.lower()
    if key not in _ACT_FN_ALIASES:
        raise ConfigError(
            f"activation function {name!r} is not supported; supported: {sorted(_ACT_FN_ALIASES)}"
        )
    return _ACT_FN_ALIASES[key]


def _pair(name: str, value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    pair = (value, value) if is_int(value) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(is_int(side) and side > 0 for side in pair):
        raise ConfigError(f"{name} must be a positive int or a pair (height, width) of them, got {value!r}")
    return (int(pair[0]), int(pair[1]))


_BOOL_FIELDS = ("ln_pre", "ln_final", "final_ln_after_pool", "patch_bias", "has_cls_token", "interpolate_pos_embed",
                "interpolate_antialias", "use_attn_result", "attn_only", "final_rms", "patch_norm", "naflex",
                "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in", "parallel_attn_mlp",
                "time_embedding", "repeat_short_clips")
_TEXT_FIELDS = ("act_fn", "mlp_type", "pool_type", "head_type", "model_name", "original_architecture",
                "normalization_type", "interpolate_mode", "positional_embedding_type", "token_order", "attention_type")


@dataclass
class HookedViTConfig:
    """Everything that defines a :class:`~vit_sae_hooks.HookedViT`'s architecture.

    The field names shared with TransformerLens (``n_layers``, ``d_model``, ``n_heads``, ``d_head``,
    ``d_mlp``, ``normalization_type``, ``attn_only``, ``use_attn_result``, ``use_split_qkv_input``,
    ``use_attn_in``, ``use_hook_mlp_in``, ``n_key_value_heads``, ``positional_embedding_type``,
    ``parallel_attn_mlp``) mean what they mean there, so TransformerLens's ``ActivationCache`` helpers and
    patching functions work; ``device`` and ``dtype`` follow the model's parameters (they are not saved).

    Token layout: ``[CLS?, registers..., patches...]``. ``pos_embed_prefix`` says how many of
    the leading prefix tokens have a learned position embedding (CLS only: 1; none: 0).

    Family options: ``positional_embedding_type`` is ``"standard"`` (a learned table, resampled with
    ``interpolate_mode`` for other sizes), ``"rotary"`` (no table; queries and keys are rotated,
    ``rotary_style`` ``"dinov3"`` or ``"vjepa2"``, base ``rotary_base``) or ``"sincos"`` (a fixed 2-D
    sine-cosine table per input grid, AIMv2 native); ``normalization_type`` ``"LN"`` or ``"RMS"``;
    ``mlp_type`` ``"standard"``, ``"swiglu"`` (silu gate) or ``"gated"`` (``act_fn`` gate); ``patch_norm``
    normalises the patch embeddings before positions are added (AIMv2); ``pool_type="attention"`` is
    attention pooling by a learned probe without the MAP head's MLP (AIMv2); ``naflex`` models (SigLIP 2)
    also take patchified inputs of mixed sizes, padded, with ``pixel_attention_mask`` and ``spatial_shapes``.

    Video models (``n_frames`` set) take ``[batch, frames, channels, height, width]``. ``tubelet_size`` frames
    make one token in time (a 3-D patch embedding; 1: one 2-D patch embedding per frame). ``token_order``
    ``"frame_major"`` lays tokens out as (time, row, column) (ViViT, V-JEPA 2), ``"patch_major"`` as (row,
    column, time) (TimeSformer). ``attention_type="divided"`` gives each block a temporal attention (each
    patch over its frames) before the spatial one (each frame's patches and the CLS token), as TimeSformer.
    ``time_embedding`` adds a learned embedding per frame to the per-patch table (TimeSformer);
    ``repeat_short_clips`` repeats a clip shorter than one tubelet to fill it (V-JEPA 2).

    Example:
        >>> cfg = HookedViTConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, image_size=32, patch_size=8)
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    image_size: tuple[int, int] | int
    patch_size: tuple[int, int] | int
    n_channels: int = 3
    d_head: int | None = None
    act_fn: str = "gelu"
    mlp_type: str = "standard"
    eps: float = 1e-5
    ln_pre: bool = False
    ln_pre_eps: float | None = None
    ln_final: bool = True
    ln_final_eps: float | None = None
    final_ln_after_pool: bool = False
    patch_bias: bool = True
    has_cls_token: bool = True
    n_register_tokens: int = 0
    pos_embed_prefix: int | None = None
    interpolate_pos_embed: bool = False
    interpolate_antialias: bool = False
    interpolate_mode: str = "bicubic"
    positional_embedding_type: str = "standard"
    rotary_style: str | None = None
    rotary_base: float = 10000.0
    patch_norm: bool = False
    naflex: bool = False
    n_frames: int | None = None
    tubelet_size: int = 1
    token_order: str = "frame_major"
    attention_type: str = "joint"
    time_embedding: bool = False
    repeat_short_clips: bool = False
    pool_type: str = "cls"
    head_type: str = "none"
    d_output: int | None = None
    use_attn_result: bool = False
    use_split_qkv_input: bool = False
    use_attn_in: bool = False
    use_hook_mlp_in: bool = False
    n_key_value_heads: int | None = None
    parallel_attn_mlp: bool = False
    model_name: str = "custom"
    original_architecture: str = "custom"
    normalization_type: str = "LN"
    attn_only: bool = False
    final_rms: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_types()
        self.image_size = _pair("image_size", self.image_size)
        self.patch_size = _pair("patch_size", self.patch_size)
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "set d_head explicitly"
                )
            self.d_head = self.d_model // self.n_heads
        self.act_fn = normalise_act_fn(self.act_fn)
        if self.ln_pre_eps is None:
            self.ln_pre_eps = self.eps
        if self.ln_final_eps is None:
            self.ln_final_eps = self.eps
        if self.pos_embed_prefix is None:
            self.pos_embed_prefix = 1 if self.has_cls_token and self.positional_embedding_type == "standard" else 0
        for name, value, allowed in (
            ("pool_type", self.pool_type, get_args(PoolType)),
            ("head_type", self.head_type, get_args(HeadType)),
            ("mlp_type", self.mlp_type, get_args(MlpType)),
            ("normalization_type", self.normalization_type, get_args(NormalizationType)),
            ("positional_embedding_type", self.positional_embedding_type, get_args(PositionalEmbeddingType)),
            ("interpolate_mode", self.interpolate_mode, get_args(InterpolateMode)),
            ("token_order", self.token_order, get_args(TokenOrder)),
            ("attention_type", self.attention_type, get_args(AttentionType)),
        ):
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not supported; choose one of {allowed}")
        if self.attention_type == "divided" and not self.is_video:
            raise ConfigError("attention_type='divided' (temporal, then spatial attention) needs a video model: set n_frames")
        if (self.positional_embedding_type == "rotary") != (self.rotary_style is not None):
            raise ConfigError(
                f"rotary_style={self.rotary_style!r} goes with positional_embedding_type='rotary' (got "
                f"{self.positional_embedding_type!r}); set both or neither"
            )
        if self.rotary_style is not None and self.rotary_style not in get_args(RotaryStyle):
            raise ConfigError(f"rotary_style={self.rotary_style!r} is not supported; choose one of {get_args(RotaryStyle)}")
        if self.positional_embedding_type != "standard" and self.pos_embed_prefix:
            raise ConfigError(
                f"pos_embed_prefix={self.pos_embed_prefix} needs a learned position table, but "
                f"positional_embedding_type={self.positional_embedding_type!r}; use pos_embed_prefix=0"
            )
        if self.pool_type == "cls" and not self.has_cls_token:
            raise ConfigError("pool_type='cls' needs a CLS token; use 'mean' or 'map' for has_cls_token=False")
        if self.head_type != "none" and self.d_output is None:
            raise ConfigError(f"head_type={self.head_type!r} needs d_output (the head's output width)")
        if self.image_size[0] % self.patch_size[0] or self.image_size[1] % self.patch_size[1]:
            raise ConfigError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if not 0 <= self.pos_embed_prefix <= self.n_prefix_tokens:
            raise ConfigError(
                f"pos_embed_prefix={self.pos_embed_prefix} must lie between 0 and the number of "
                f"prefix tokens ({self.n_prefix_tokens})"
            )

    def _check_types(self) -> None:
        # Every field is checked before any is used, so a damaged config file fails here, by name.
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_channels"):
            positive_int(name, getattr(self, name))
        non_negative_int("n_register_tokens", self.n_register_tokens)
        for name in ("d_head", "d_output"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if self.pos_embed_prefix is not None:
            non_negative_int("pos_embed_prefix", self.pos_embed_prefix)
        if self.n_frames is not None:
            positive_int("n_frames", self.n_frames)
        positive_int("tubelet_size", self.tubelet_size)
        if self.n_key_value_heads is not None:
            raise ConfigError(f"n_key_value_heads={self.n_key_value_heads!r}: vision transformers here have no grouped-query "
                              "attention; leave it None")
        finite_number("rotary_base", self.rotary_base, minimum=0, strictly=True)
        finite_number("eps", self.eps, minimum=0, strictly=True)
        for name in ("ln_pre_eps", "ln_final_eps"):
            if getattr(self, name) is not None:
                finite_number(name, getattr(self, name), minimum=0, strictly=True)
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in _TEXT_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra must be a JSON object, got {self.extra!r}")

    @property
    def device(self) -> Any:
        """The device of the model's parameters (as TransformerLens's tools expect), e.g. ``device('cpu')``."""
        return self.__dict__.get("_device", torch.device("cpu"))

    @property
    def dtype(self) -> Any:
        """The dtype of the model's parameters, e.g. ``torch.float32``."""
        return self.__dict__.get("_dtype", torch.float32)

    def follow_parameters(self, parameter: Any) -> None:
        """Record ``parameter``'s device and dtype as the model's (called by the model whenever it moves)."""
        self.__dict__["_device"], self.__dict__["_dtype"] = parameter.device, parameter.dtype

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches per side (rows, columns) at the native image size."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape of a batch of inputs at the native size: ``(batch, channels, height, width)``, or
        ``(batch, frames, channels, height, width)`` for video models.

        Example:
            >>> torch.zeros(cfg.input_shape(2)).shape
            torch.Size([2, 3, 224, 224])
        """
        frames = (self.n_frames,) if self.is_video else ()
        return (batch, *frames, self.n_channels, *self.image_size)

    @property
    def n_time(self) -> int:
        """Token positions in time at the native clip length (1 for image models)."""
        if self.n_frames is None:
            return 1
        return max(1, self.n_frames // self.tubelet_size)

    @property
    def is_video(self) -> bool:
        """Whether the model reads clips ``[batch, frames, channels, height, width]``."""
        return self.n_frames is not None

    @property
    def n_patches(self) -> int:
        """Patch tokens at the native image size (and clip length, for video models)."""
        return self.grid_size[0] * self.grid_size[1] * self.n_time

    @property
    def n_prefix_tokens(self) -> int:
        """Tokens before the patches: the CLS token (if any) and the register tokens."""
        return int(self.has_cls_token) + self.n_register_tokens

    @property
    def n_ctx(self) -> int:
        """Sequence length at the native image size."""
        return self.n_prefix_tokens + self.n_patches

    @property
    def d_out(self) -> int:
        """Width of the model output (``hook_output``)."""
        return self.d_output if self.head_type != "none" else self.d_model

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict that :meth:`from_dict` turns back into this config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: object = None) -> HookedViTConfig:
        """Build a config from :meth:`to_dict` output, rejecting unknown keys by name (and naming ``source``)."""
        return config_from_dict(
            cls, data, required=("n_layers", "d_model", "n_heads", "d_mlp", "image_size", "patch_size"), source=source
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))
