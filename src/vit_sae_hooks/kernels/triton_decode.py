"""Triton versions of the three sparse primitives (decode forward and both backward passes).

Same contracts as ``cpu.gather_sum``, ``cpu.gather_dot`` and ``cpu.scatter_outer``; all
accumulate in float32. ``scatter_outer`` sorts the (row, slot) pairs by latent and lets one
program own one latent's output row, so it needs no atomics and is deterministic.

Imported lazily by the dispatcher: ``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from jaxtyping import Float, Int
from torch import Tensor

# Output columns per program of gather_sum and scatter_outer, and rows per gather_sum program.
BLOCK_D = 128
GATHER_SUM_BLOCK_ROWS = 16
# Columns per step of gather_dot's dot products.
GATHER_DOT_BLOCK_D = 64


@triton.jit
def _gather_sum_kernel(
    indices_ptr, weights_ptr, table_ptr, out_ptr, n_rows, d, k,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols < d)[None, :]
    acc = tl.zeros((BLOCK_ROWS, BLOCK_D), dtype=tl.float32)
    slots_start = rows.to(tl.int64) * k  # int64: n * k passes 2^31 at 33M rows for k 64
    for slot in range(k):
        latent = tl.load(indices_ptr + slots_start + slot, mask=row_mask, other=0).to(tl.int64)
        weight = tl.load(weights_ptr + slots_start + slot, mask=row_mask, other=0.0).to(tl.float32)
        vectors = tl.load(table_ptr + latent[:, None] * d + cols[None, :], mask=mask, other=0.0)
        acc += weight[:, None] * vectors.to(tl.float32)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * d + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gather_dot_kernel(
    indices_ptr, rows_ptr, table_ptr, out_ptr, d, k,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slots = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    slot_mask = slots < k
    latent = tl.load(indices_ptr + row * k + slots, mask=slot_mask, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for start in range(0, d, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        col_mask = cols < d
        grad = tl.load(rows_ptr + row * d + cols, mask=col_mask, other=0.0).to(tl.float32)
        vectors = tl.load(
            table_ptr + latent[:, None] * d + cols[None, :], mask=slot_mask[:, None] & col_mask[None, :], other=0.0
        ).to(tl.float32)
        acc += tl.sum(vectors * grad[None, :], axis=1)
    tl.store(out_ptr + row * k + slots, acc.to(out_ptr.dtype.element_ty), mask=slot_mask)


@triton.jit
def _scatter_outer_kernel(
    order_ptr, starts_ptr, weights_ptr, rows_ptr, out_ptr, d, k,
    BLOCK_D: tl.constexpr,
):
    latent = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    start = tl.load(starts_ptr + latent)
    stop = tl.load(starts_ptr + latent + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for position in range(start, stop):
        flat = tl.load(order_ptr + position)
        weight = tl.load(weights_ptr + flat).to(tl.float32)
        row = flat // k
        acc += weight * tl.load(rows_ptr + row * d + cols, mask=col_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + latent * d + cols, acc, mask=col_mask)


def gather_sum(
    indices: Int[Tensor, "n k"], weights: Float[Tensor, "n k"], table: Float[Tensor, "d_sae d"]
) -> Float[Tensor, "n d"]:
    """``sum_j weights[n, j] * table[indices[n, j]]`` (Triton), in ``table``'s dtype.

    Example:
        >>> out = gather_sum(indices, values, W_dec)  # CUDA tensors
    """
    n_rows, k = indices.shape
    d = table.shape[1]
    out = torch.empty(n_rows, d, dtype=table.dtype, device=table.device)
    if n_rows == 0 or d == 0:
        return out.zero_()
    grid = (triton.cdiv(n_rows, GATHER_SUM_BLOCK_ROWS), triton.cdiv(d, BLOCK_D))
    _gather_sum_kernel[grid](
        indices.contiguous(), weights.contiguous(), table.contiguous(), out, n_rows, d, k,
        BLOCK_ROWS=GATHER_SUM_BLOCK_ROWS, BLOCK_D=BLOCK_D,
    )
    return out


def gather_dot(
    indices: Int[Tensor, "n k"], rows: Float[Tensor, "n d"], table: Float[Tensor, "d_sae d"]
) -> Float[Tensor, "n k"]:
    """``<rows[n], table[indices[n, j]]>`` for every selected latent (Triton), in ``table``'s dtype.

    Example:
        >>> grad_values = gather_dot(indices, grad_out, W_dec)  # CUDA tensors
    """
    n_rows, k = indices.shape
    out = torch.empty(n_rows, k, dtype=table.dtype, device=table.device)
    if n_rows == 0:
        return out
    block_k = min(triton.next_power_of_2(k), 64)
    grid = (n_rows, triton.cdiv(k, block_k))
    _gather_dot_kernel[grid](
        indices.contiguous(), rows.contiguous(), table.contiguous(), out, table.shape[1], k,
        BLOCK_K=block_k, BLOCK_D=GATHER_DOT_BLOCK_D,
    )
    return out


def scatter_outer(
    indices: Int[Tensor, "n k"], weights: Float[Tensor, "n k"], rows: Float[Tensor, "n d"], n_latents: int
) -> Float[Tensor, "d_sae d"]:
    """``out[l] = sum over indices[n, j] == l of weights[n, j] * rows[n]`` (Triton), zero for unused latents.

    Example:
        >>> grad_W_dec = scatter_outer(indices, values, grad_out, d_sae)  # CUDA tensors
    """
    k = indices.shape[1]
    d = rows.shape[1]
    flat = indices.flatten()
    # Stable sort groups each latent's contributions in row order: a fixed summation order.
    sorted_latents, order = torch.sort(flat, stable=True)
    # Where each latent's run starts in the sorted order. (torch.bincount would count them too, but on
    # CUDA it reads the largest index back to the host to size its output: a sync per backward.)
    starts = torch.searchsorted(sorted_latents, torch.arange(n_latents + 1, device=flat.device))
    out = torch.empty(n_latents, d, dtype=torch.float32, device=rows.device)
    if d > 0:
        grid = (n_latents, triton.cdiv(d, BLOCK_D))
        _scatter_outer_kernel[grid](
            order, starts, weights.contiguous().flatten(), rows.contiguous(), out, d, k, BLOCK_D=BLOCK_D
        )
    return out.to(rows.dtype)
