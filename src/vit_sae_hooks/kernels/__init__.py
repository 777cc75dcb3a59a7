"""Sparse TopK encode/decode: the two functions every SAE calls, dispatched per call on device and dtype.

Contract (stable; faster backends plug in behind it):

- ``encode_topk(x, W_enc, b_enc, k, apply_relu=True) -> (values, indices)``:
  ``pre = x @ W_enc + b_enc``; the ``k`` largest entries of ``pre`` along the last axis;
  ReLU applied to those ``k`` values only when ``apply_relu``. ``x`` is ``[..., d_in]``;
  ``values`` is ``[..., k]`` in ``x``'s dtype, ``indices`` ``[..., k]`` int64.
- ``decode_topk(values, indices, W_dec, b_dec) -> [..., d_in]``:
  ``sum_j values[..., j] * W_dec[indices[..., j]] + b_dec`` without a dense ``[N, d_sae]`` tensor.

Any input preprocessing (subtracting ``b_dec``, normalisation) is the SAE module's job.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["decode_topk", "encode_topk"]


def encode_topk(
    x: Float[Tensor, "*batch d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"] | None,
    k: int,
    apply_relu: bool = True,
) -> tuple[Float[Tensor, "*batch k"], Int[Tensor, "*batch k"]]:
    """Top-``k`` latent values and indices of ``x @ W_enc + b_enc``.

    Example:
        >>> values, indices = encode_topk(torch.randn(4, 8), torch.randn(8, 32), None, k=3)
    """
    pre = x @ W_enc
    if b_enc is not None:
        pre = pre + b_enc
    values, indices = pre.topk(k, dim=-1, sorted=False)
    if apply_relu:
        values = values.relu()
    return values, indices


def decode_topk(
    values: Float[Tensor, "*batch k"],
    indices: Int[Tensor, "*batch k"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"] | None,
) -> Float[Tensor, "*batch d_in"]:
    """Reconstruction ``sum_j values[j] * W_dec[indices[j]] (+ b_dec)`` by a sparse gather.

    Example:
        >>> out = decode_topk(torch.rand(4, 3), torch.randint(0, 32, (4, 3)), torch.randn(32, 8), None)
    """
    leading = values.shape[:-1]
    k = values.shape[-1]
    out = F.embedding_bag(
        indices.reshape(-1, k), W_dec, per_sample_weights=values.reshape(-1, k).to(W_dec.dtype), mode="sum"
    )
    if b_dec is not None:
        out = out + b_dec
    return out.reshape(*leading, W_dec.shape[-1])
