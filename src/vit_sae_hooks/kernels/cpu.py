"""Plain-PyTorch kernels: the default on CUDA and non-float32 CPU tensors, and the fallback everywhere else.

Four primitives cover the forward and backward of a TopK SAE:

- ``encode_forward``: one GEMM (+ bias) and a top-k of the pre-activations;
- ``gather_sum``: ``out[n] = sum_j weights[n, j] * table[indices[n, j]]`` (decode, and grad wrt x);
- ``gather_dot``: ``out[n, j] = <rows[n], table[indices[n, j]]>`` (grad wrt the decoded values);
- ``scatter_outer``: ``out[l] = sum_{indices[n, j] = l} weights[n, j] * rows[n]`` (grad wrt W_dec rows
  and W_enc columns, touching only the latents that were selected).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

# Elements of the [rows, k, d] intermediate materialised per step by gather_dot/scatter_outer.
# CPU: 4M floats (16 MiB in float32) keeps the temporary in the last-level cache's neighbourhood
# while making the per-step Python overhead negligible. A GPU streams 16 MiB in ~5 us, less than
# the launches of one step cost, so there a step takes 64M elements (256 MiB in float32): 13
# steps instead of 193 at N 16384, k 64, d 768.
_GATHER_BUDGET_ELEMENTS = 1 << 22
_GATHER_BUDGET_ELEMENTS_GPU = 1 << 26

# Latents per group in the two-stage top-k; 32 measured fastest at d_sae 49152 on a 2-core
# Sapphire Rapids (16: 0.14 s, 32: 0.09 s, 64: 0.09 s, 128: 0.13 s, torch.topk: 0.18 s at N 1600).
_TOPK_GROUP = 32
# Below this many groups per selected latent the candidate set is too large a fraction of the row
# for the extra passes to pay off (at d_sae 8192, k 64 the grouped path only broke even).
_GROUPED_MIN_GROUPS_PER_K = 16


def topk_last_dim(
    scores: Float[Tensor, "n d_sae"], k: int
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """The ``k`` largest entries of each row and their column indices (unsorted), exactly.

    Example:
        >>> values, indices = topk_last_dim(torch.randn(4, 4096), 8)

    On CPU, a row's k largest entries all live in the k groups (of ``_TOPK_GROUP`` columns) with
    the largest maxima, so a cheap pass of group maxima shrinks the partial sort to ``k * group``
    candidates; ``torch.topk`` over all ``d_sae`` columns is about twice as slow there. Other
    devices use ``torch.topk``: the grouped pass was only measured on CPU.
    """
    n_rows, n_cols = scores.shape
    n_groups = n_cols // _TOPK_GROUP
    if scores.device.type != "cpu" or n_groups < _GROUPED_MIN_GROUPS_PER_K * k:
        return scores.topk(k, dim=-1, sorted=False)
    grouped_cols = n_groups * _TOPK_GROUP
    grouped = scores[:, :grouped_cols].unflatten(1, (n_groups, _TOPK_GROUP))
    _, best_groups = grouped.amax(dim=-1).topk(k, dim=-1, sorted=False)
    candidates = grouped.gather(1, best_groups[:, :, None].expand(n_rows, k, _TOPK_GROUP)).flatten(1)
    candidate_cols = (best_groups[:, :, None] * _TOPK_GROUP + torch.arange(_TOPK_GROUP, device=scores.device)).flatten(1)
    if grouped_cols < n_cols:
        # The ragged tail (< one group) is always a candidate.
        tail_cols = torch.arange(grouped_cols, n_cols, device=scores.device).expand(n_rows, -1)
        candidates = torch.cat([candidates, scores[:, grouped_cols:]], dim=1)
        candidate_cols = torch.cat([candidate_cols, tail_cols], dim=1)
    values, positions = candidates.topk(k, dim=-1, sorted=False)
    return values, candidate_cols.gather(1, positions)


def encode_forward(
    x: Float[Tensor, "n d_in"], W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, " d_sae"] | None, k: int
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """Top-``k`` pre-activations of ``x @ W_enc + b_enc`` from one GEMM (bias fused via addmm).

    Example:
        >>> values, indices = encode_forward(torch.randn(4, 8), torch.randn(8, 32), None, 3)
    """
    pre = x @ W_enc if b_enc is None else torch.addmm(b_enc, x, W_enc)
    return topk_last_dim(pre, k)


def encode_forward_chunked(
    x: Float[Tensor, "n d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"] | None,
    k: int,
    chunk_size: int,
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """Top-``k`` pre-activations computed ``chunk_size`` latents at a time (peak extra memory ``n * chunk_size``).

    Example:
        >>> values, indices = encode_forward_chunked(torch.randn(4, 8), torch.randn(8, 32), None, 3, 64)

    Carries the ``k`` groups (of ``_TOPK_GROUP`` latents) with the largest maxima from chunk to
    chunk, the same argument as ``topk_last_dim``: the global top-k lies inside them. That costs
    one max pass per chunk plus ``n * k * group`` candidates, instead of a partial sort per chunk.
    """
    d_sae = W_enc.shape[1]
    group = _TOPK_GROUP
    chunk_size = max(group, chunk_size // group * group)  # chunks hold whole groups
    offsets = torch.arange(group, device=x.device)
    kept_groups = kept_maxima = kept_ids = None
    for start in range(0, d_sae, chunk_size):
        stop = min(start + chunk_size, d_sae)
        weight_chunk = W_enc[:, start:stop]
        pre = x @ weight_chunk if b_enc is None else torch.addmm(b_enc[start:stop], x, weight_chunk)
        if (stop - start) % group:
            pre = F.pad(pre, (0, group - (stop - start) % group), value=float("-inf"))
        groups = pre.unflatten(1, (-1, group))
        maxima = groups.amax(dim=-1)
        ids = (start // group + torch.arange(groups.shape[1], device=x.device)).expand_as(maxima)
        if kept_groups is not None:
            groups, maxima, ids = _best_groups(groups, maxima, ids, k)
            groups = torch.cat([kept_groups, groups], dim=1)
            maxima = torch.cat([kept_maxima, maxima], dim=1)
            ids = torch.cat([kept_ids, ids], dim=1)
        kept_groups, kept_maxima, kept_ids = _best_groups(groups, maxima, ids, k)
    assert kept_groups is not None and kept_ids is not None  # d_sae >= k >= 1 was validated
    values, positions = kept_groups.flatten(1).topk(k, dim=1, sorted=False)
    columns = (kept_ids[:, :, None] * group + offsets).flatten(1)
    return values, columns.gather(1, positions)


def _best_groups(groups: Tensor, maxima: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` groups with the largest maxima (all of them when there are at most ``k``)."""
    if maxima.shape[1] <= k:
        return groups, maxima, ids
    maxima, keep = maxima.topk(k, dim=1, sorted=False)
    return groups.gather(1, keep[:, :, None].expand(-1, -1, groups.shape[2])), maxima, ids.gather(1, keep)


def gather_sum(
    indices: Int[Tensor, "n k"], weights: Float[Tensor, "n k"], table: Float[Tensor, "d_sae d"]
) -> Float[Tensor, "n d"]:
    """``sum_j weights[n, j] * table[indices[n, j]]`` via ``embedding_bag`` (no ``[n, d_sae]`` tensor).

    Example:
        >>> out = gather_sum(torch.randint(0, 32, (4, 3)), torch.rand(4, 3), torch.randn(32, 8))
    """
    return F.embedding_bag(indices, table, per_sample_weights=weights.to(table.dtype), mode="sum")


def _rows_per_step(k: int, d: int, device: torch.device) -> int:
    budget = _GATHER_BUDGET_ELEMENTS if device.type == "cpu" else _GATHER_BUDGET_ELEMENTS_GPU
    return max(1, budget // max(1, k * d))


def gather_dot(
    indices: Int[Tensor, "n k"], rows: Float[Tensor, "n d"], table: Float[Tensor, "d_sae d"]
) -> Float[Tensor, "n k"]:
    """``<rows[n], table[indices[n, j]]>`` for every selected latent, in bounded row chunks.

    Example:
        >>> out = gather_dot(torch.randint(0, 32, (4, 3)), torch.randn(4, 8), torch.randn(32, 8))
    """
    n_rows, k = indices.shape
    out = torch.empty(n_rows, k, dtype=table.dtype, device=table.device)
    step = _rows_per_step(k, table.shape[1], table.device)
    for start in range(0, n_rows, step):
        stop = start + step
        gathered = table[indices[start:stop]]
        out[start:stop] = torch.bmm(gathered, rows[start:stop, :, None].to(table.dtype))[:, :, 0]
    return out


def scatter_outer(
    indices: Int[Tensor, "n k"], weights: Float[Tensor, "n k"], rows: Float[Tensor, "n d"], n_latents: int
) -> Float[Tensor, "d_sae d"]:
    """``out[l] = sum over (n, j) with indices[n, j] == l of weights[n, j] * rows[n]``; other rows are zero.

    Example:
        >>> out = scatter_outer(torch.randint(0, 32, (4, 3)), torch.rand(4, 3), torch.randn(4, 8), 32)

    Low-precision inputs accumulate in float32: a latent can collect thousands of contributions.
    """
    n_rows, k = indices.shape
    accumulate_dtype = torch.promote_types(rows.dtype, torch.float32)
    out = torch.zeros(n_latents, rows.shape[1], dtype=accumulate_dtype, device=rows.device)
    step = _rows_per_step(k, rows.shape[1], rows.device)
    for start in range(0, n_rows, step):
        stop = start + step
        contributions = weights[start:stop, :, None].to(accumulate_dtype) * rows[start:stop, None, :].to(accumulate_dtype)
        out.index_add_(0, indices[start:stop].flatten(), contributions.flatten(0, 1))
    return out.to(rows.dtype)


def scatter_sum(indices: Int[Tensor, "n k"], weights: Float[Tensor, "n k"], n_latents: int) -> Float[Tensor, " d_sae"]:
    """``out[l] = sum of weights[n, j] over indices[n, j] == l`` (grad wrt ``b_enc``).

    Example:
        >>> out = scatter_sum(torch.randint(0, 32, (4, 3)), torch.rand(4, 3), 32)
    """
    accumulate_dtype = torch.promote_types(weights.dtype, torch.float32)
    out = torch.zeros(n_latents, dtype=accumulate_dtype, device=weights.device)
    out.index_add_(0, indices.flatten(), weights.flatten().to(accumulate_dtype))
    return out.to(weights.dtype)
