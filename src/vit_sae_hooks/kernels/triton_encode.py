"""Fused TopK encode in Triton: a GEMM whose epilogue keeps each (row, latent-block)'s top candidates.

The dense ``[N, d_sae]`` pre-activation tensor is never written. Each program computes one
``[BLOCK_N, BLOCK_L]`` tile of ``x @ W_enc + b_enc`` in float32 registers, packs every value with
its latent index into one int64 key whose integer order is the float order, and stores only the
tile's top ``KC = next_pow2(k)`` keys per row. A row's global top-k is inside the union of its
blocks' top-k, so ``torch.topk`` over the ``N x (d_sae / BLOCK_L) x KC`` keys finishes the job
exactly; with ``BLOCK_L >= 4 * KC`` that buffer is at most a quarter of the dense elements.

Imported lazily by the dispatcher: ``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from jaxtyping import Float, Int
from torch import Tensor

HAS_TL_TOPK = hasattr(tl, "topk")
# Input dimensions per GEMM step; tl.dot needs at least 16.
BLOCK_D = 32
# Warps per program on CUDA. With 4, a 64 x 256 tile's int64 keys spill: ptxas reports 1.2-1.6 KB of
# stack per thread at k 64 (Triton 3.9, sm_90); with 8, none in bfloat16/float16 and 16 B in float32
# (benchmarks/gpu/triton_resources.py). The CPU interpreter ignores it.
CUDA_NUM_WARPS = 8


@triton.jit
def _encode_candidates_kernel(
    x_ptr, w_ptr, b_ptr, keys_ptr, n_rows, d_in, d_sae,
    stride_x_row, stride_x_col, stride_w_row, stride_w_col, candidates_per_row,
    HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr, USE_TL_TOPK: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, KC: tl.constexpr,
):
    block = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    latents = block * BLOCK_L + tl.arange(0, BLOCK_L)
    row_mask = rows < n_rows
    latent_mask = latents < d_sae
    acc = tl.zeros((BLOCK_N, BLOCK_L), dtype=tl.float32)
    for start in range(0, d_in, BLOCK_D):
        dims = start + tl.arange(0, BLOCK_D)
        dim_mask = dims < d_in
        x_tile = tl.load(
            x_ptr + rows[:, None].to(tl.int64) * stride_x_row + dims[None, :] * stride_x_col,
            mask=row_mask[:, None] & dim_mask[None, :], other=0.0,
        )
        w_tile = tl.load(
            w_ptr + dims[:, None].to(tl.int64) * stride_w_row + latents[None, :] * stride_w_col,
            mask=dim_mask[:, None] & latent_mask[None, :], other=0.0,
        )
        if UPCAST:
            x_tile = x_tile.to(tl.float32)
            w_tile = w_tile.to(tl.float32)
        acc = tl.dot(x_tile, w_tile, acc, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + latents, mask=latent_mask, other=0.0).to(tl.float32)[None, :]
    acc = tl.where(latent_mask[None, :], acc, float("-inf"))
    # IEEE floats order like sign-magnitude integers; flipping the magnitude bits of negatives
    # makes them order like two's complement, so (value bits << 32 | index) sorts by value.
    bits = acc.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    keys = (ordered.to(tl.int64) << 32) | latents[None, :].to(tl.int64)
    out_rows = keys_ptr + rows[:, None].to(tl.int64) * candidates_per_row + block * KC
    if USE_TL_TOPK:
        best = tl.topk(keys, KC, dim=1)
        slots = tl.arange(0, KC)
        tl.store(out_rows + slots[None, :], best, mask=row_mask[:, None])
    else:
        ranked = tl.sort(keys, dim=1, descending=True)
        slots = tl.arange(0, BLOCK_L)
        tl.store(out_rows + slots[None, :], ranked, mask=row_mask[:, None] & (slots < KC)[None, :])


def unpack_keys(keys: Int[Tensor, "n k"]) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """Float32 values and int64 latent indices from the kernel's packed keys.

    Example:
        >>> values, indices = unpack_keys(keys)
    """
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    return bits.view(torch.float32), keys & 0xFFFFFFFF


def default_block_l(candidates_per_block: int) -> int:
    """Latents per tile: 4x the candidates kept per tile (so the key buffer holds at most a quarter of
    the dense pre-activations), between 32 and 512.

    Example:
        >>> default_block_l(64)
        256
    """
    return min(max(4 * candidates_per_block, 32), 512)


def encode_forward(
    x: Float[Tensor, "n d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"] | None,
    k: int,
    *,
    block_n: int | None = None,
    block_l: int | None = None,
    block_d: int = BLOCK_D,
    num_warps: int = CUDA_NUM_WARPS,
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """Top-``k`` pre-activations of ``x @ W_enc + b_enc`` without writing the ``[n, d_sae]`` tensor.

    Example:
        >>> values, indices = encode_forward(x, W_enc, b_enc, 64)  # CUDA tensors

    float32 inputs use IEEE products unless ``torch.backends.cuda.matmul.allow_tf32`` is set,
    matching what ``x @ W_enc`` would do. The tile is ``block_n`` rows by ``block_l`` latents,
    stepping ``block_d`` input dimensions at a time, run by ``num_warps`` warps.
    """
    n_rows, d_in = x.shape
    d_sae = W_enc.shape[1]
    if block_n is None:
        # The CPU interpreter emulates tl.topk step by step, so smaller tiles there keep tests quick.
        block_n = 64 if x.is_cuda else 16
    candidates_per_block = triton.next_power_of_2(k)
    if block_l is None:
        block_l = default_block_l(candidates_per_block)
    block_l = max(block_l, candidates_per_block, 16)
    candidates_per_block = min(candidates_per_block, block_l)
    n_blocks = triton.cdiv(d_sae, block_l)
    candidates_per_row = n_blocks * candidates_per_block
    keys = torch.empty(n_rows, candidates_per_row, dtype=torch.int64, device=x.device)
    if n_rows == 0:
        return torch.empty(0, k, dtype=x.dtype, device=x.device), torch.empty(0, k, dtype=torch.int64, device=x.device)
    use_tf32 = x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    grid = (triton.cdiv(n_rows, block_n), n_blocks)
    _encode_candidates_kernel[grid](
        x, W_enc, b_enc if b_enc is not None else x, keys, n_rows, d_in, d_sae,
        x.stride(0), x.stride(1), W_enc.stride(0), W_enc.stride(1), candidates_per_row,
        HAS_BIAS=b_enc is not None,
        INPUT_PRECISION="tf32" if use_tf32 else "ieee",
        USE_TL_TOPK=HAS_TL_TOPK,
        # The CPU interpreter's tl.dot mishandles bfloat16 operands (measured: garbage results in
        # Triton 3.9); products of upcast bf16 values are exact in float32, so results match.
        UPCAST=not x.is_cuda and x.dtype == torch.bfloat16,
        BLOCK_N=block_n, BLOCK_L=block_l, BLOCK_D=block_d, KC=candidates_per_block,
        num_warps=num_warps,
    )
    best = keys.topk(k, dim=1, sorted=False).values if candidates_per_row > k else keys
    values, indices = unpack_keys(best)
    return values.to(x.dtype), indices
