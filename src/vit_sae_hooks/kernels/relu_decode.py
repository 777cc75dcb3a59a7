"""Decode of dense ReLU activations: sparse gather when the batch is sparse enough to win, GEMM otherwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from vit_sae_hooks.errors import InputShapeError

# Fraction of non-zero activations below which the embedding_bag decode beats the dense GEMM.
# Measured by benchmarks/bench_sae.py (N 1600, d_in 768, d_sae 49152, float32, 2-vCPU Sapphire
# Rapids): sparse wins 1.3x at density 0.02, loses 1.5x at 0.05; linear interpolation crosses at
# ~0.027. See docs/performance.md.
SPARSE_DECODE_MAX_DENSITY = 0.025


# Rows inspected to estimate the density: counting every non-zero costs a tenth of the decode itself.
_DENSITY_SAMPLE_ROWS = 64


def _estimated_density(flat_acts: Float[Tensor, "n d_sae"]) -> float:
    step = max(1, flat_acts.shape[0] // _DENSITY_SAMPLE_ROWS)
    sample = flat_acts[::step]
    return int(torch.count_nonzero(sample)) / sample.numel()


def decode_dense_or_sparse(
    acts: Float[Tensor, "*batch d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"] | None,
    *,
    max_density: float = SPARSE_DECODE_MAX_DENSITY,
) -> Float[Tensor, "*batch d_in"]:
    """``acts @ W_dec + b_dec``, computed from the non-zero activations only when few enough are non-zero.

    Example:
        >>> out = decode_dense_or_sparse(torch.randn(4, 32).relu(), torch.randn(32, 8), None)

    Meant for ReLU/JumpReLU SAEs (L0 of a few hundred to a few thousand out of tens of
    thousands). When ``acts`` requires grad the dense GEMM is used, because its gradient is
    dense too (it is non-zero where ``acts`` is zero).
    """
    if acts.ndim == 0 or W_dec.ndim != 2 or acts.shape[-1] != W_dec.shape[0]:
        raise InputShapeError(
            f"acts has shape {tuple(acts.shape)} but W_dec has {tuple(W_dec.shape)}; "
            f"acts' last dimension must equal W_dec's first (d_sae = {W_dec.shape[0] if W_dec.ndim else '?'})."
        )
    if acts.dtype != W_dec.dtype:
        raise InputShapeError(f"acts has dtype {acts.dtype} but W_dec has {W_dec.dtype}; cast with acts.to(W_dec.dtype).")
    flat = acts.reshape(-1, acts.shape[-1])
    use_sparse = not acts.requires_grad and flat.numel() > 0 and _estimated_density(flat) <= max_density
    if use_sparse:
        rows, cols = flat.nonzero(as_tuple=True)
        offsets = torch.searchsorted(rows, torch.arange(flat.shape[0], device=flat.device))
        out = F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=flat[rows, cols])
    else:
        out = flat @ W_dec
    if b_dec is not None:
        out = out + b_dec
    return out.reshape(*acts.shape[:-1], W_dec.shape[1])
