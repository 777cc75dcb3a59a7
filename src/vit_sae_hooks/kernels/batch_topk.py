"""Batch-level top-k (BatchTopK, Bussmann et al. 2024): the ``int(k · N)`` largest pre-activations of a whole
batch of ``N`` tokens, however they fall across the tokens, as a padded sparse code, differentiable.

The selection runs in two stages so that no dense ``[N, d_sae]`` tensor is needed:

1. every token's ``m`` largest pre-activations come from the per-token kernels (:func:`encode_topk`: native
   C++ on CPU, torch, Triton on CUDA), with ``m = 2k`` to start;
2. the ``int(k · N)`` largest of those ``N · m`` candidates are kept.

This is exact whenever every token keeps fewer than its ``m`` candidates: a token's non-candidates are no
larger than its smallest candidate, which was not kept. A token that keeps all its candidates may own more
winners, so its candidates are recomputed at twice the width and stage 2 runs again, until no token is full
(or ``m = d_sae``). The result is what the dense ``topk`` over the flattened ``[N · d_sae]`` pre-activations
gives, up to ties. The backward pass is the per-token kernels' sparse backward, masked to the kept entries.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_sae_hooks.checks import finite_number, positive_int
from vit_sae_hooks.errors import ConfigError

__all__ = ["batch_topk_count", "encode_batch_topk", "smallest_kept"]


def batch_topk_count(k: float, n_tokens: int, d_sae: int) -> int:
    """How many (token, latent) pairs a batch of ``n_tokens`` keeps: ``int(k · n_tokens)``, at most all of them.

    Example:
        >>> batch_topk_count(16, 34, 256)
        544
    """
    return min(int(k * n_tokens), n_tokens * d_sae)


def encode_batch_topk(
    x: Float[Tensor, "*batch d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"] | None,
    k: float,
    apply_relu: bool = True,
    *,
    backend: str = "auto",
    width: int | None = None,
) -> tuple[Float[Tensor, "*batch m"], Int[Tensor, "*batch m"]]:
    """The batch top-k of ``x @ W_enc + b_enc`` as ``(values, indices)``, zeros where a candidate was not kept.

    ``k`` is the average number of active latents per token (a float is allowed, as in SAELens); the batch
    keeps ``int(k · N)`` of its ``N · d_sae`` pre-activations. With ``apply_relu`` (SAELens) the selection
    ranks ``relu(pre)``; without it (saev) negative values can be kept. ``m`` (the returned width) is at least
    ``width`` (default ``2k``) and grows where a token needs more; decode with :func:`decode_topk`. Entries
    that were not kept hold the value 0, and a token's padding may repeat an index, so make a dense tensor
    with ``scatter_add`` (not ``scatter``).

    Example:
        >>> values, indices = encode_batch_topk(torch.randn(34, 64), torch.randn(64, 256), None, k=16)
    """
    # Imported here: the package's __init__ imports this module.
    from vit_sae_hooks.kernels import encode_topk

    finite_number("k", k, minimum=0, strictly=True)
    if W_enc.ndim != 2:
        raise ConfigError(f"W_enc has shape {tuple(W_enc.shape)}; it must be 2-D [d_in, d_sae].")
    d_sae = W_enc.shape[1]
    if k > d_sae:
        raise ConfigError(f"k={k} is more than d_sae={d_sae}; a batch top-k keeps at most every latent of every token.")
    if width is not None:
        positive_int("width", width, "Pass the candidates per token, or None.")
    leading = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    n = flat.shape[0]
    total = batch_topk_count(k, n, d_sae)
    m = min(d_sae, max(width or 2 * math.ceil(k), 1))
    values, indices = encode_topk(flat, W_enc, b_enc, m, apply_relu, backend=backend)
    if n == 0:
        return values.reshape(*leading, m), indices.reshape(*leading, m)
    valid = torch.ones_like(indices, dtype=torch.bool)
    while True:
        kept = _keep_largest(values.detach(), valid, total)
        full = kept.sum(1) == valid.sum(1)
        if apply_relu:
            # A clamped candidate means the token has nothing more above zero to offer.
            full &= (values.detach() > 0).sum(1) == valid.sum(1)
        full &= valid.sum(1) < d_sae
        rows = full.nonzero().flatten()
        if rows.numel() == 0:
            break
        m_next = min(d_sae, 2 * m)
        more_values, more_indices = encode_topk(flat[rows], W_enc, b_enc, m_next, apply_relu, backend=backend)
        pad = m_next - m
        values = torch.cat([values, values.new_zeros(n, pad)], 1).index_copy(0, rows, more_values)
        indices = torch.cat([indices, indices.new_zeros(n, pad)], 1).index_copy(0, rows, more_indices)
        valid = torch.cat([valid, valid.new_zeros(n, pad)], 1).index_fill(0, rows, True)
        m = m_next
    values = values * kept.to(values.dtype)
    return values.reshape(*leading, m), indices.reshape(*leading, m)


def _keep_largest(values: Tensor, valid: Tensor, total: int) -> Tensor:
    # The `total` largest valid candidates of the whole batch, as a mask of the candidate layout.
    scores = values.masked_fill(~valid, -math.inf).flatten()
    chosen = scores.topk(total, sorted=False).indices
    kept = torch.zeros_like(scores, dtype=torch.bool).index_fill_(0, chosen, True)
    return kept.view_as(valid) & valid


def smallest_kept(values: Float[Tensor, "*batch m"]) -> Float[Tensor, ""]:
    """The smallest positive value of a batch top-k code (the running threshold's update), ``nan`` if none.

    Computed on the device without a host synchronisation.

    Example:
        >>> smallest_kept(torch.tensor([[0.0, 2.0], [0.5, 0.0]]))
        tensor(0.5000)
    """
    positive = values.detach()
    smallest = positive.masked_fill(positive <= 0, math.inf).min() if positive.numel() else positive.new_tensor(math.inf)
    return torch.where(torch.isinf(smallest), torch.full_like(smallest, math.nan), smallest)
