"""The modules a hooked ViT is built from, each declaring its HookPoints where the tensor is computed.

Parameter shapes follow TransformerLens (``W_Q [n_heads, d_model, d_head]``, ``W_O [n_heads, d_head,
d_model]``, ``W_in [d_model, d_mlp]``) so TL's analysis code (``ActivationCache`` head results,
``FactoredMatrix``) reads them directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from vit_sae_hooks._tl import HookPoint, has_hooks
from vit_sae_hooks.model.config import HookedViTConfig


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


class Attention(nn.Module):
    """Multi-head self-attention (or cross-attention from a query input) with per-head hooks.

    Uses ``scaled_dot_product_attention`` unless something is attached to ``hook_attn_scores`` or
    ``hook_pattern`` (hooks or caching), in which case the scores are computed explicitly.
    """

    def __init__(self, cfg: HookedViTConfig):
        super().__init__()
        self.cfg = cfg
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
        self.hook_attn_scores = HookPoint()  # [batch, head, query, key]
        self.hook_pattern = HookPoint()  # [batch, head, query, key]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        if cfg.use_attn_result:
            self.hook_result = HookPoint()  # [batch, pos, head, d_model]

    def _project(self, x: Tensor, W: Tensor, b: Tensor) -> Tensor:
        n_heads, d_model, d_head = W.shape
        # One GEMM over all heads; the [pos, head, d_head] view is free.
        flat = x @ W.permute(1, 0, 2).reshape(d_model, n_heads * d_head) + b.reshape(-1)
        return flat.unflatten(-1, (n_heads, d_head))

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        kv_input: Float[Tensor, "batch kv_pos d_model"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        kv_input = x if kv_input is None else kv_input
        q = self.hook_q(self._project(x, self.W_Q, self.b_Q))
        k = self.hook_k(self._project(kv_input, self.W_K, self.b_K))
        v = self.hook_v(self._project(kv_input, self.W_V, self.b_V))
        if has_hooks(self.hook_attn_scores) or has_hooks(self.hook_pattern):
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(self.cfg.d_head)
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(scores.float().softmax(dim=-1).to(v.dtype))
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        else:
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            z = z.transpose(1, 2)
        z = self.hook_z(z)
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O))
            return result.sum(dim=-2) + self.b_O
        return z.flatten(-2) @ self.W_O.flatten(0, 1) + self.b_O


class MLP(nn.Module):
    """The feed-forward block: ``hook_pre`` (pre-activation) and ``hook_post`` (post-activation), ``[batch pos d_mlp]``.

    With ``mlp_type='swiglu'`` (DINOv2 giant), ``hook_pre`` is the gate pre-activation,
    ``hook_pre_linear`` the linear branch, and ``hook_post = silu(gate) * linear``.
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
        if cfg.mlp_type == "swiglu":
            self.W_gate = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
            self.b_gate = nn.Parameter(torch.zeros(cfg.d_mlp))
            nn.init.normal_(self.W_gate, std=cfg.d_model**-0.5)
            self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if self.cfg.mlp_type == "swiglu":
            gate = self.hook_pre(x @ self.W_gate + self.b_gate)
            linear = self.hook_pre_linear(x @ self.W_in + self.b_in)
            post = self.hook_post(F.silu(gate) * linear)
        else:
            pre = self.hook_pre(x @ self.W_in + self.b_in)
            post = self.hook_post(activation(self.cfg.act_fn, pre))
        return post @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    """One pre-LN block: ``resid_pre -> +attn(ln1) -> resid_mid -> +mlp(ln2) -> resid_post``."""

    def __init__(self, cfg: HookedViTConfig, block_index: int):
        super().__init__()
        self.block_index = block_index
        self.ln1 = LayerNorm(cfg.d_model, cfg.eps)
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg.d_model, cfg.eps)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre)))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)


def interpolate_grid_embedding(
    grid_embed: Float[Tensor, "n_grid d_model"],
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    antialias: bool = False,
) -> Float[Tensor, "n_new_grid d_model"]:
    """Resample patch position embeddings to a new patch grid (bicubic, in float32, as DINOv2 does)."""
    if old_grid == new_grid:
        return grid_embed
    d_model = grid_embed.shape[-1]
    image_like = grid_embed.reshape(1, *old_grid, d_model).permute(0, 3, 1, 2)
    resized = F.interpolate(image_like.float(), size=new_grid, mode="bicubic", align_corners=False, antialias=antialias)
    return resized.to(grid_embed.dtype).permute(0, 2, 3, 1).reshape(-1, d_model)


class Embed(nn.Module):
    """Patchify and prepend CLS and register tokens; also give the matching position embeddings.

    Returns ``(tokens, pos_embed)``, both ``[batch pos d_model]``: the model hooks them as
    ``hook_embed`` and ``hook_pos_embed`` and adds them into ``hook_full_embed``.
    """

    def __init__(self, cfg: HookedViTConfig):
        super().__init__()
        self.cfg = cfg
        d_model = cfg.d_model
        self.W_patch = nn.Parameter(torch.empty(d_model, cfg.n_channels, *cfg.patch_size))
        nn.init.normal_(self.W_patch, std=(cfg.n_channels * cfg.patch_size[0] * cfg.patch_size[1]) ** -0.5)
        self.b_patch = nn.Parameter(torch.zeros(d_model)) if cfg.patch_bias else None
        self.cls_token = nn.Parameter(torch.randn(d_model) * 0.02) if cfg.has_cls_token else None
        self.register_tokens = (
            nn.Parameter(torch.randn(cfg.n_register_tokens, d_model) * 0.02) if cfg.n_register_tokens else None
        )
        self.pos_embed = nn.Parameter(torch.randn(cfg.pos_embed_prefix + cfg.n_patches, d_model) * 0.02)

    def position_embeddings(self, grid: tuple[int, int]) -> Float[Tensor, "pos d_model"]:
        """Position embeddings for every token of an image whose patch grid is ``grid``."""
        cfg = self.cfg
        prefix = self.pos_embed[: cfg.pos_embed_prefix]
        patches = interpolate_grid_embedding(
            self.pos_embed[cfg.pos_embed_prefix :], cfg.grid_size, grid, cfg.interpolate_antialias
        )
        parts = [prefix]
        missing = cfg.n_prefix_tokens - cfg.pos_embed_prefix
        if missing:
            parts.append(prefix.new_zeros(missing, cfg.d_model))
        parts.append(patches)
        return torch.cat(parts) if len(parts) > 1 else patches

    def forward(self, images: Float[Tensor, "batch channels height width"]) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        patches = F.conv2d(images.to(self.W_patch.dtype), self.W_patch, self.b_patch, stride=cfg.patch_size)
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = patches.flatten(2).transpose(1, 2)
        batch = tokens.shape[0]
        prefix = []
        if self.cls_token is not None:
            prefix.append(self.cls_token.expand(batch, 1, -1))
        if self.register_tokens is not None:
            prefix.append(self.register_tokens.expand(batch, -1, -1))
        if prefix:
            tokens = torch.cat([*prefix, tokens], dim=1)
        return tokens, self.position_embeddings(grid).expand(batch, -1, -1)


class Pool(nn.Module):
    """Reduce the token sequence to one vector: the CLS token, the patch mean, or attention pooling (MAP).

    MAP (SigLIP's head): a learned probe attends to all tokens, then ``x + mlp(ln(x))``; its
    attention and MLP carry their own hooks (``pool.attn.hook_pattern`` shows where it looks).
    """

    def __init__(self, cfg: HookedViTConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.pool_type == "map":
            self.probe = nn.Parameter(torch.randn(cfg.d_model) * 0.02)
            self.attn = Attention(cfg)
            self.ln = LayerNorm(cfg.d_model, cfg.ln_final_eps)
            self.mlp = MLP(cfg)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        pool_type = self.cfg.pool_type
        if pool_type == "cls":
            return x[:, 0]
        if pool_type == "mean":
            return x[:, self.cfg.n_prefix_tokens :].mean(dim=1)
        probe = self.probe.expand(x.shape[0], 1, -1)
        attended = self.attn(probe, kv_input=x)
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
