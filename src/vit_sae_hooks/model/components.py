"""The modules a hooked ViT is built from, each declaring its HookPoints where the tensor is computed.

Parameter shapes follow TransformerLens (``W_Q [n_heads, d_model, d_head]``, ``W_O [n_heads, d_head,
d_model]``, ``W_in [d_model, d_mlp]``) so TL's analysis code (``ActivationCache`` head results,
``FactoredMatrix``) reads them directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from vit_sae_hooks._tl import HookPoint, has_hooks
from vit_sae_hooks.model.config import HookedViTConfig
from vit_sae_hooks.tokens import TokenLayout


def sync_hook_point(module: nn.Module, name: str, wanted: bool) -> None:
    """Give ``module`` a HookPoint called ``name`` when ``wanted`` and none otherwise (for optional hooks)."""
    if wanted and not hasattr(module, name):
        setattr(module, name, HookPoint())
    elif not wanted and hasattr(module, name):
        delattr(module, name)


@dataclass
class ForwardContext:
    """What every block of one forward pass shares: the token layout, the rotary tables, the key mask.

    ``rotary`` is ``(cos, sin)`` over the rotated tokens and dimensions (see :class:`Rotary`);
    ``key_mask`` marks the tokens attention may read (``None``: all of them).
    """

    layout: TokenLayout
    rotary: tuple[Tensor, Tensor] | None = None
    key_mask: Bool[Tensor, "batch pos"] | None = None


def activation(name: str, x: Tensor) -> Tensor:
    """Apply the activation function ``name`` (one of the normalised names in the config)."""
    if name == "gelu":
        return F.gelu(x)
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu(x)
    if name == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {name!r}")


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens hooks: ``hook_scale`` (the std) and ``hook_normalized`` (the output)."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        if not has_hooks(self.hook_scale):
            # The fused kernel is exact and faster; the scale is only materialised when someone looks.
            return self.hook_normalized(F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps))
        dtype = x.dtype
        x = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized((x / scale).to(dtype) * self.w + self.b)


class RMSNorm(nn.Module):
    """RMSNorm (no centring, no bias) with the LayerNorm's hooks: ``hook_scale`` (the RMS) and ``hook_normalized``.

    Computes in float32 whatever the input dtype, as AIMv2 does, and casts back before the weight.
    """

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        dtype = x.dtype
        x = x.float()
        if not has_hooks(self.hook_scale):
            normed = F.rms_norm(x, x.shape[-1:], None, self.eps)
        else:
            normed = x / self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(self.w * normed.to(dtype))


def make_norm(cfg: HookedViTConfig, d_model: int, eps: float) -> LayerNorm | RMSNorm:
    """The normalisation layer ``cfg.normalization_type`` asks for (LayerNorm or RMSNorm)."""
    return RMSNorm(d_model, eps) if cfg.normalization_type == "RMS" else LayerNorm(d_model, eps)


class Rotary(nn.Module):
    """Rotary position embeddings of queries and keys, in the two conventions the supported families use.

    - ``"dinov3"``: 2-D. Patch centres ``(y, x)`` in ``[-1, 1]``; ``inv_freq = base^-(4j/d_head)``; angles
      ``2π · coordinate · inv_freq`` laid out ``[y | x | y | x]`` over ``d_head``; ``rotate_half``; prefix tokens
      (CLS, registers) are not rotated.
    - ``"vjepa2"``: 3-D. Each of (frame, row, column) rotates its own ``s = 2·⌊⌊d_head/3⌋/2⌋`` dimensions
      (the rest are left alone) with ``ω_j = base^-(j/(s/2))`` tiled twice and pairs ``(x_{2i}, x_{2i+1})``
      rotated together; a token's (frame, row, column) come from its flat index on the checkpoint's grid.
    """

    def __init__(self, cfg: HookedViTConfig):
        super().__init__()
        self.cfg = cfg

    def tables(self, layout: TokenLayout, n_pos: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` for the rotated tokens of a sequence of ``n_pos`` tokens, each ``[n_rotated, d_rotated]``."""
        cfg = self.cfg
        d_head = cfg.d_head
        if cfg.rotary_style == "dinov3":
            rows, columns = layout.grid
            # In float32, like the reference implementation, whatever the model's dtype.
            centre_rows = (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) / rows * 2 - 1
            centre_columns = (torch.arange(columns, dtype=torch.float32, device=device) + 0.5) / columns * 2 - 1
            coords = torch.stack(torch.meshgrid(centre_rows, centre_columns, indexing="ij"), -1).flatten(0, 1)
            inv_freq = 1 / cfg.rotary_base ** torch.arange(0, 1, 4 / d_head, dtype=torch.float32, device=device)
            angles = (2 * math.pi * coords[:, :, None] * inv_freq).flatten(1, 2).tile(2)
        else:
            segment = 2 * ((d_head // 3) // 2)
            grid_rows, grid_columns = cfg.grid_size
            index = torch.arange(n_pos - layout.n_prefix_tokens, device=device)
            per_frame = grid_rows * grid_columns
            positions = (index // per_frame, (index % per_frame) // grid_columns, index % grid_columns)
            omega = 1.0 / cfg.rotary_base ** (torch.arange(segment // 2, dtype=dtype, device=device) / (segment / 2))
            angles = torch.cat([(position.to(dtype)[:, None] * omega).tile(2) for position in positions], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(
        self, x: Float[Tensor, "batch pos head d_head"], context: ForwardContext
    ) -> Float[Tensor, "batch pos head d_head"]:
        cos, sin = context.rotary
        prefix = context.layout.n_prefix_tokens
        rotated = x[:, prefix:, :, : cos.shape[-1]]
        if self.cfg.rotary_style == "dinov3":
            first, second = rotated.chunk(2, dim=-1)
            turned = torch.cat([-second, first], dim=-1)
        else:
            turned = torch.stack([-rotated[..., 1::2], rotated[..., 0::2]], dim=-1).flatten(-2)
        rotated = rotated * cos[:, None] + turned * sin[:, None]
        return torch.cat([x[:, :prefix], torch.cat([rotated, x[:, prefix:, :, cos.shape[-1] :]], dim=-1)], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention (or cross-attention from a query input) with per-head hooks.

    Uses ``scaled_dot_product_attention`` unless something is attached to ``hook_attn_scores`` or
    ``hook_pattern`` (hooks or caching), in which case the scores are computed explicitly. Inputs are
    ``[batch, pos, d_model]``, or ``[batch, pos, head, d_model]`` (one copy per head, as TransformerLens's
    ``use_split_qkv_input`` and ``use_attn_in`` give it). With ``cfg.use_attn_result`` each head's output
    ``[batch, pos, head, d_model]`` passes ``hook_result`` before the heads are summed.
    """

    def __init__(self, cfg: HookedViTConfig, rotary: bool = True):
        super().__init__()
        self.cfg = cfg
        self.rotates = rotary and cfg.positional_embedding_type == "rotary"
        n_heads, d_model, d_head = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(n_heads, d_model, d_head))
        self.W_K = nn.Parameter(torch.empty(n_heads, d_model, d_head))
        self.W_V = nn.Parameter(torch.empty(n_heads, d_model, d_head))
        self.W_O = nn.Parameter(torch.empty(n_heads, d_head, d_model))
        self.b_Q = nn.Parameter(torch.zeros(n_heads, d_head))
        self.b_K = nn.Parameter(torch.zeros(n_heads, d_head))
        self.b_V = nn.Parameter(torch.zeros(n_heads, d_head))
        self.b_O = nn.Parameter(torch.zeros(d_model))
        for weight in (self.W_Q, self.W_K, self.W_V, self.W_O):
            nn.init.normal_(weight, std=d_model**-0.5)
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, head, d_head]
        if self.rotates:
            self.rotary = Rotary(cfg)
            self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]: queries after the rotation
            self.hook_rot_k = HookPoint()  # [batch, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, query, key]
        self.hook_pattern = HookPoint()  # [batch, head, query, key]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.sync_optional_hooks()

    def sync_optional_hooks(self) -> None:
        """Create or drop ``hook_result`` to follow ``cfg.use_attn_result``."""
        sync_hook_point(self, "hook_result", self.cfg.use_attn_result)  # [batch, pos, head, d_model]

    def _project(self, x: Tensor, W: Tensor, b: Tensor) -> Tensor:
        n_heads, d_model, d_head = W.shape
        if x.ndim == 4:  # one input per head
            return torch.einsum("bphd,hde->bphe", x, W) + b
        # One GEMM over all heads; the [pos, head, d_head] view is free.
        flat = x @ W.permute(1, 0, 2).reshape(d_model, n_heads * d_head) + b.reshape(-1)
        return flat.unflatten(-1, (n_heads, d_head))

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos head d_model"],
        kv_input: Float[Tensor, "batch kv_pos d_model"] | None = None,
        context: ForwardContext | None = None,
        value_input: Float[Tensor, "batch kv_pos head d_model"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        kv_input = x if kv_input is None else kv_input
        value_input = kv_input if value_input is None else value_input
        q = self.hook_q(self._project(x, self.W_Q, self.b_Q))
        k = self.hook_k(self._project(kv_input, self.W_K, self.b_K))
        v = self.hook_v(self._project(value_input, self.W_V, self.b_V))
        if self.rotates:
            q = self.hook_rot_q(self.rotary(q, context))
            k = self.hook_rot_k(self.rotary(k, context))
        key_mask = None if context is None or context.key_mask is None else context.key_mask[:, None, None, :]
        if has_hooks(self.hook_attn_scores) or has_hooks(self.hook_pattern):
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(self.cfg.d_head)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask, float("-inf"))
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(scores.float().softmax(dim=-1).to(v.dtype))
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        else:
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_mask
            )
            z = z.transpose(1, 2)
        z = self.hook_z(z)
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O))
            return result.sum(dim=-2) + self.b_O
        return z.flatten(-2) @ self.W_O.flatten(0, 1) + self.b_O


class MLP(nn.Module):
    """The feed-forward block: ``hook_pre`` (pre-activation) and ``hook_post`` (post-activation), ``[batch pos d_mlp]``.

    Gated MLPs (``mlp_type='swiglu'``: DINOv2 giant, silu gate; ``'gated'``: DINOv3, AIMv2, the gate through
    ``act_fn``): ``hook_pre`` is the gate pre-activation, ``hook_pre_linear`` the linear branch, and
    ``hook_post = act(gate) * linear``.
    """

    def __init__(self, cfg: HookedViTConfig):
        super().__init__()
        self.cfg = cfg
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        nn.init.normal_(self.W_in, std=cfg.d_model**-0.5)
        nn.init.normal_(self.W_out, std=cfg.d_mlp**-0.5)
        self.hook_pre = HookPoint()
        self.gated = cfg.mlp_type in ("swiglu", "gated")
        self.gate_act_fn = "silu" if cfg.mlp_type == "swiglu" else cfg.act_fn
        if self.gated:
            self.W_gate = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
            self.b_gate = nn.Parameter(torch.zeros(cfg.d_mlp))
            nn.init.normal_(self.W_gate, std=cfg.d_model**-0.5)
            self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if self.gated:
            gate = self.hook_pre(x @ self.W_gate + self.b_gate)
            linear = self.hook_pre_linear(x @ self.W_in + self.b_in)
            post = self.hook_post(activation(self.gate_act_fn, gate) * linear)
        else:
            pre = self.hook_pre(x @ self.W_in + self.b_in)
            post = self.hook_post(activation(self.cfg.act_fn, pre))
        return post @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    """One pre-LN block: ``resid_pre -> +attn(ln1) -> resid_mid -> +mlp(ln2) -> resid_post``.

    TransformerLens's switches add hooks: ``use_attn_in`` (``hook_attn_in``, the residual stream copied per
    head, read by queries, keys and values), ``use_split_qkv_input`` (``hook_q_input``, ``hook_k_input``,
    ``hook_v_input``, one copy each) and ``use_hook_mlp_in`` (``hook_mlp_in``, the MLP's input before ``ln2``).
    The per-head copies go through ``ln1`` per head, as in TransformerLens.
    """

    def __init__(self, cfg: HookedViTConfig, block_index: int):
        super().__init__()
        self.cfg = cfg
        self.block_index = block_index
        self.ln1 = make_norm(cfg, cfg.d_model, cfg.eps)
        self.attn = Attention(cfg)
        self.ln2 = make_norm(cfg, cfg.d_model, cfg.eps)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        self.sync_optional_hooks()

    def sync_optional_hooks(self) -> None:
        """Create or drop the TransformerLens switch hooks to follow the config's flags."""
        cfg = self.cfg
        sync_hook_point(self, "hook_attn_in", cfg.use_attn_in)  # [batch, pos, head, d_model]
        for name in ("hook_q_input", "hook_k_input", "hook_v_input"):
            sync_hook_point(self, name, cfg.use_split_qkv_input)  # [batch, pos, head, d_model]
        sync_hook_point(self, "hook_mlp_in", cfg.use_hook_mlp_in)  # [batch, pos, d_model]

    def forward(
        self, resid_pre: Float[Tensor, "batch pos d_model"], context: ForwardContext | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        resid_pre = self.hook_resid_pre(resid_pre)
        if cfg.use_split_qkv_input or cfg.use_attn_in:
            per_head = resid_pre[:, :, None, :].expand(-1, -1, cfg.n_heads, -1)
            if cfg.use_split_qkv_input:
                inputs = [hook(per_head.clone()) for hook in (self.hook_q_input, self.hook_k_input, self.hook_v_input)]
            else:
                inputs = [self.hook_attn_in(per_head.clone())] * 3
            query, key, value = (self.ln1(part) for part in inputs)
            attn_out = self.attn(query, kv_input=key, value_input=value, context=context)
        else:
            attn_out = self.attn(self.ln1(resid_pre), context=context)
        attn_out = self.hook_attn_out(attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)


class DividedSpaceTimeBlock(TransformerBlock):
    """A TimeSformer block: temporal attention (each patch over its frames), then spatial attention (each
    frame's patches with the CLS token), then the MLP.

    Tokens are ``[CLS, patches in (row, column, time) order]``. The temporal sublayer has its own hooks:
    ``temporal_ln.*``, ``temporal_attn.*`` (its ``hook_pattern`` is ``[batch·patches, head, frame, frame]``)
    and ``hook_temporal_out`` (added to the patches; TimeSformer's extra ``temporal_dense`` projection is folded
    into ``temporal_attn.W_O``), then ``hook_resid_temporal``. Spatial attention sees one copy of the CLS token
    per frame (``attn.hook_pattern`` is ``[batch·frames, head, 1 + patches, 1 + patches]``); the CLS token's
    update is the mean over frames. ``hook_attn_out`` is the spatial update of the whole sequence.
    """

    def __init__(self, cfg: HookedViTConfig, block_index: int):
        super().__init__(cfg, block_index)
        self.temporal_ln = make_norm(cfg, cfg.d_model, cfg.eps)
        self.temporal_attn = Attention(cfg, rotary=False)
        self.hook_temporal_out = HookPoint()  # [batch, patches · frames, d_model]
        self.hook_resid_temporal = HookPoint()  # [batch, pos, d_model]

    def forward(
        self, resid_pre: Float[Tensor, "batch pos d_model"], context: ForwardContext | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        frames = context.layout.frames
        resid_pre = self.hook_resid_pre(resid_pre)
        batch, _, d_model = resid_pre.shape
        cls, patches = resid_pre[:, :1], resid_pre[:, 1:]
        n_patches = patches.shape[1] // frames
        over_time = self.temporal_ln(patches).reshape(batch * n_patches, frames, d_model)
        temporal = self.hook_temporal_out(self.temporal_attn(over_time).reshape(batch, n_patches * frames, d_model))
        resid_temporal = self.hook_resid_temporal(torch.cat([cls, patches + temporal], dim=1))
        cls, patches = resid_temporal[:, :1], resid_temporal[:, 1:]
        per_frame = patches.reshape(batch, n_patches, frames, d_model).transpose(1, 2).reshape(batch * frames, n_patches, d_model)
        per_frame = torch.cat([cls.repeat_interleave(frames, dim=0), per_frame], dim=1)
        spatial = self.attn(self.ln1(per_frame))
        cls_update = spatial[:, :1].reshape(batch, frames, d_model).mean(1, keepdim=True)
        patch_update = spatial[:, 1:].reshape(batch, frames, n_patches, d_model).transpose(1, 2).flatten(1, 2)
        attn_out = self.hook_attn_out(torch.cat([cls_update, patch_update], dim=1))
        resid_mid = self.hook_resid_mid(resid_temporal + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)


def interpolate_grid_embedding(
    grid_embed: Float[Tensor, "n_grid d_model"],
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    antialias: bool = False,
    mode: str = "bicubic",
) -> Float[Tensor, "n_new_grid d_model"]:
    """Resample patch position embeddings to a new patch grid (``mode``, in float32, as DINOv2 and SigLIP 2 do)."""
    if old_grid == new_grid:
        return grid_embed
    d_model = grid_embed.shape[-1]
    image_like = grid_embed.reshape(1, *old_grid, d_model).permute(0, 3, 1, 2)
    resized = F.interpolate(image_like.float(), size=new_grid, mode=mode, align_corners=False, antialias=antialias)
    return resized.to(grid_embed.dtype).permute(0, 2, 3, 1).reshape(-1, d_model)


def sincos_grid_embedding(
    grid: tuple[int, int], d_model: int, dtype: torch.dtype, device: torch.device
) -> Float[Tensor, "n_grid d_model"]:
    """A fixed 2-D sine-cosine position table laid out ``[sin(w) | cos(w) | sin(h) | cos(h)]`` (AIMv2 native).

    ``ω_j = 10000^-(j / (d_model / 4))``; a patch at row ``h``, column ``w`` has angles ``h·ω`` and ``w·ω``.
    Computed in float64, then cast.
    """
    quarter = d_model // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    rows, columns = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64, device=device),
        torch.arange(grid[1], dtype=torch.float64, device=device),
        indexing="ij",
    )
    row_angles, column_angles = rows.flatten()[:, None] * omega, columns.flatten()[:, None] * omega
    table = [column_angles.sin(), column_angles.cos(), row_angles.sin(), row_angles.cos()]
    return torch.cat(table, dim=1).to(dtype)


class Embed(nn.Module):
    """Patchify and prepend CLS and register tokens; also give the matching position embeddings.

    Returns ``(tokens, pos_embed)``, both ``[batch pos d_model]``: the model hooks them as
    ``hook_embed`` and ``hook_pos_embed`` and adds them into ``hook_full_embed``. ``pos_embed`` is None for
    rotary models, whose positions enter in attention instead. With ``cfg.patch_norm`` the patch embeddings
    pass through ``ln_patch`` (hooked) before anything is prepended or added.
    """

    def __init__(self, cfg: HookedViTConfig):
        super().__init__()
        self.cfg = cfg
        d_model = cfg.d_model
        # Video models patchify with a 3-D kernel spanning tubelet_size frames.
        kernel = (cfg.tubelet_size, *cfg.patch_size) if cfg.is_video else cfg.patch_size
        self.W_patch = nn.Parameter(torch.empty(d_model, cfg.n_channels, *kernel))
        nn.init.normal_(self.W_patch, std=(cfg.n_channels * math.prod(kernel)) ** -0.5)
        self.b_patch = nn.Parameter(torch.zeros(d_model)) if cfg.patch_bias else None
        self.ln_patch = make_norm(cfg, d_model, cfg.eps) if cfg.patch_norm else None
        self.cls_token = nn.Parameter(torch.randn(d_model) * 0.02) if cfg.has_cls_token else None
        self.register_tokens = (
            nn.Parameter(torch.randn(cfg.n_register_tokens, d_model) * 0.02) if cfg.n_register_tokens else None
        )
        if cfg.positional_embedding_type == "standard":
            # With a separate embedding per frame (TimeSformer) the table covers one frame's grid.
            rows = cfg.grid_size[0] * cfg.grid_size[1] if cfg.time_embedding else cfg.n_patches
            self.pos_embed = nn.Parameter(torch.randn(cfg.pos_embed_prefix + rows, d_model) * 0.02)
        if cfg.time_embedding:
            self.time_embed = nn.Parameter(torch.randn(cfg.n_time, d_model) * 0.02)

    @property
    def adds_positions(self) -> bool:
        """Whether position embeddings are added to the tokens (False for rotary models)."""
        return self.cfg.positional_embedding_type != "rotary"

    def position_embeddings(self, grid: tuple[int, int], frames: int = 1) -> Float[Tensor, "pos d_model"] | None:
        """Position embeddings for every token of an image (or a clip of ``frames`` time positions) whose patch
        grid is ``grid`` (None for rotary models)."""
        cfg = self.cfg
        if cfg.positional_embedding_type == "rotary":
            return None
        if cfg.positional_embedding_type == "sincos":
            prefix = self.W_patch.new_zeros(0, cfg.d_model)
            patches = sincos_grid_embedding(grid, cfg.d_model, self.W_patch.dtype, self.W_patch.device)
        elif cfg.is_video and not cfg.time_embedding:
            # One learned embedding per space-time token, at the checkpoint's clip size.
            prefix, patches = self.pos_embed[: cfg.pos_embed_prefix], self.pos_embed[cfg.pos_embed_prefix :]
        else:
            prefix = self.pos_embed[: cfg.pos_embed_prefix]
            patches = interpolate_grid_embedding(
                self.pos_embed[cfg.pos_embed_prefix :], cfg.grid_size, grid, cfg.interpolate_antialias, cfg.interpolate_mode
            )
            if cfg.time_embedding:
                # A patch at grid index n in frame t gets table[n] + time[t], laid out in the token order.
                per_token = patches[:, None] + self.time_embed[:frames][None]  # [grid, frames, d_model]
                patches = (per_token if cfg.token_order == "patch_major" else per_token.transpose(0, 1)).flatten(0, 1)
        parts = [prefix]
        missing = cfg.n_prefix_tokens - prefix.shape[0]
        if missing:
            parts.append(prefix.new_zeros(missing, cfg.d_model))
        parts.append(patches)
        return torch.cat(parts)

    def forward(
        self, images: Float[Tensor, "batch channels height width"] | Float[Tensor, "batch frames channels height width"]
    ) -> tuple[Tensor, Tensor | None]:
        cfg = self.cfg
        frames = 1
        if cfg.is_video:
            clips = images.transpose(1, 2).to(self.W_patch.dtype)  # [batch, channels, frames, height, width]
            if cfg.repeat_short_clips and clips.shape[2] < cfg.tubelet_size:
                clips = clips.repeat(1, 1, cfg.tubelet_size, 1, 1)
            patches = F.conv3d(clips, self.W_patch, self.b_patch, stride=(cfg.tubelet_size, *cfg.patch_size))
            frames = patches.shape[2]
        else:
            patches = F.conv2d(images.to(self.W_patch.dtype), self.W_patch, self.b_patch, stride=cfg.patch_size)
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = patches.flatten(2).transpose(1, 2)  # (time,) row, column
        if cfg.is_video and cfg.token_order == "patch_major":
            tokens = tokens.unflatten(1, (frames, -1)).transpose(1, 2).flatten(1, 2)
        if self.ln_patch is not None:
            tokens = self.ln_patch(tokens)
        batch = tokens.shape[0]
        prefix = []
        if self.cls_token is not None:
            prefix.append(self.cls_token.expand(batch, 1, -1))
        if self.register_tokens is not None:
            prefix.append(self.register_tokens.expand(batch, -1, -1))
        if prefix:
            tokens = torch.cat([*prefix, tokens], dim=1)
        positions = self.position_embeddings(grid, frames)
        return tokens, None if positions is None else positions.expand(batch, -1, -1)

    def from_patches(
        self, patches: Float[Tensor, "batch max_patches patch_values"], spatial_shapes: Tensor
    ) -> tuple[Float[Tensor, "batch max_patches d_model"], Float[Tensor, "batch max_patches d_model"]]:
        """Tokens and position embeddings of patchified images (SigLIP 2 NaFlex): each row of ``patches`` is one
        patch's values in (row, column, channel) order; image ``i`` fills its first ``rows·columns`` rows
        (``spatial_shapes[i]``), the rest is padding.

        Padding rows get the first position embedding, as transformers gives them (attention never reads them).

        Example:
            >>> tokens, positions = model.embed.from_patches(pixel_values, spatial_shapes)
        """
        cfg = self.cfg
        weight = self.W_patch.permute(0, 2, 3, 1).flatten(1)  # the convolution as a linear map of (row, col, channel)
        tokens = F.linear(patches.to(weight.dtype), weight, self.b_patch)
        batch, max_patches, _ = tokens.shape
        positions = tokens.new_empty(batch, max_patches, cfg.d_model)
        for shape in {tuple(pair) for pair in spatial_shapes.tolist()}:
            table = self.position_embeddings(shape)
            images = (spatial_shapes.cpu() == torch.tensor(shape)).all(-1).nonzero().flatten().tolist()
            filled = min(table.shape[0], max_patches)
            for image in images:
                positions[image, :filled] = table[:filled]
                positions[image, filled:] = table[0]
        return tokens, positions


class Pool(nn.Module):
    """Reduce the token sequence to one vector: the CLS token, the patch mean, or attention pooling.

    MAP (``"map"``, SigLIP's head): a learned probe attends to all tokens, then ``x + mlp(ln(x))``; its
    attention and MLP carry their own hooks (``pool.attn.hook_pattern`` shows where it looks).
    ``"attention"`` (AIMv2's head) is the probe's attention alone.
    """

    def __init__(self, cfg: HookedViTConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.pool_type in ("map", "attention"):
            self.probe = nn.Parameter(torch.randn(cfg.d_model) * 0.02)
            self.attn = Attention(cfg, rotary=False)
        if cfg.pool_type == "map":
            self.ln = make_norm(cfg, cfg.d_model, cfg.ln_final_eps)
            self.mlp = MLP(cfg)

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], context: ForwardContext | None = None
    ) -> Float[Tensor, "batch d_model"]:
        pool_type = self.cfg.pool_type
        if pool_type == "cls":
            return x[:, 0]
        key_mask = None if context is None else context.key_mask
        if pool_type == "mean":
            patches = x[:, self.cfg.n_prefix_tokens :]
            if key_mask is None:
                return patches.mean(dim=1)
            valid = key_mask[:, self.cfg.n_prefix_tokens :, None].to(x.dtype)
            return (patches * valid).sum(1) / valid.sum(1)
        probe = self.probe.expand(x.shape[0], 1, -1)
        attended = self.attn(probe, kv_input=x, context=context)
        if pool_type == "attention":
            return attended[:, 0]
        return (attended + self.mlp(self.ln(attended)))[:, 0]


class Head(nn.Module):
    """The output layer: CLIP's projection or a classifier (``linear``), or HF ViT's tanh pooler (``linear_tanh``)."""

    def __init__(self, cfg: HookedViTConfig):
        super().__init__()
        self.cfg = cfg
        self.W = nn.Parameter(torch.empty(cfg.d_model, cfg.d_output))
        self.b = nn.Parameter(torch.zeros(cfg.d_output))
        nn.init.normal_(self.W, std=cfg.d_model**-0.5)

    def forward(self, pooled: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_output"]:
        out = pooled @ self.W + self.b
        return torch.tanh(out) if self.cfg.head_type == "linear_tanh" else out
