"""Autograd Functions for TopK encode and sparse decode, whose backward passes stay sparse.

The dense backward of ``topk(x @ W_enc)`` scatters ``grad_values`` into an ``[N, d_sae]`` zero
tensor and runs two more full GEMMs; only ``N * k`` entries of it are non-zero. Here the
backward touches only the selected latents: ``N * k * d_in`` multiply-adds instead of
``2 * N * d_sae * d_in``. Each backend supplies the same four primitives (see ``cpu.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vit_sae_hooks.kernels import cpu


@dataclass(frozen=True)
class KernelSet:
    """The primitives one backend provides; the autograd Functions are written once against them."""

    name: str
    encode_forward: Callable[[Tensor, Tensor, Tensor | None, int], tuple[Tensor, Tensor]]
    gather_sum: Callable[[Tensor, Tensor, Tensor], Tensor]
    gather_dot: Callable[[Tensor, Tensor, Tensor], Tensor]
    scatter_outer: Callable[[Tensor, Tensor, Tensor, int], Tensor]


class TopKEncode(torch.autograd.Function):
    """``(values, indices)`` of the top-k of ``x @ W_enc + b_enc`` with ReLU on the k values; sparse backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor | None, k: int, apply_relu: bool, kernels: KernelSet
    ) -> tuple[Tensor, Tensor]:
        values, indices = kernels.encode_forward(x, W_enc, b_enc, k)
        # Under autocast the GEMM may have run in bfloat16; the contract is values in x's dtype, which
        # the decode (whose weights keep theirs) accepts, as every backend returns without autocast.
        values = values.to(x.dtype)
        if apply_relu:
            values = values.relu()
        ctx.save_for_backward(x, W_enc, values, indices)
        ctx.mark_non_differentiable(indices)
        ctx.apply_relu = apply_relu
        ctx.kernels = kernels
        return values, indices

    @staticmethod
    def backward(ctx: Any, grad_values: Tensor, _grad_indices: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, W_enc, values, indices = ctx.saved_tensors
        kernels: KernelSet = ctx.kernels
        d_sae = W_enc.shape[1]
        grad_pre = grad_values.to(W_enc.dtype)
        if ctx.apply_relu:
            # ReLU's derivative is 0 at 0, as in torch.relu, so clamped values pass no gradient.
            grad_pre = grad_pre * (values > 0)
        grad_x = grad_W_enc = grad_b_enc = None
        if ctx.needs_input_grad[0]:
            # Rows of W_enc.T are what the selected latents read from; a contiguous copy makes
            # each gathered row one cache-friendly read instead of d_in strided ones.
            grad_x = kernels.gather_sum(indices, grad_pre, W_enc.t().contiguous())
        if ctx.needs_input_grad[1]:
            grad_W_enc = kernels.scatter_outer(indices, grad_pre, x, d_sae).t()
        if ctx.needs_input_grad[2]:
            grad_b_enc = cpu.scatter_sum(indices, grad_pre, d_sae)
        return grad_x, grad_W_enc, grad_b_enc, None, None, None


class SparseDecode(torch.autograd.Function):
    """``sum_j values[n, j] * W_dec[indices[n, j]] + b_dec`` with gradients only at the used rows of ``W_dec``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor | None, kernels: KernelSet
    ) -> Tensor:
        out = kernels.gather_sum(indices, values, W_dec)
        if b_dec is not None:
            out = out + b_dec
        ctx.save_for_backward(values, indices, W_dec)
        ctx.kernels = kernels
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        values, indices, W_dec = ctx.saved_tensors
        kernels: KernelSet = ctx.kernels
        grad_out = grad_out.contiguous()
        grad_values = grad_W_dec = grad_b_dec = None
        if ctx.needs_input_grad[0]:
            grad_values = kernels.gather_dot(indices, grad_out, W_dec).to(values.dtype)
        if ctx.needs_input_grad[2]:
            grad_W_dec = kernels.scatter_outer(indices, values, grad_out, W_dec.shape[0]).to(W_dec.dtype)
        if ctx.needs_input_grad[3]:
            grad_b_dec = grad_out.sum(0)
        return grad_values, None, grad_W_dec, grad_b_dec, None
