"""Input checks shared by the kernel entry points: each failure names the bad value and the fix."""

from __future__ import annotations

import torch
from torch import Tensor

from vit_sae_hooks.checks import positive_int
from vit_sae_hooks.errors import ConfigError, InputShapeError


def _same_dtype_and_device(reference_name: str, reference: Tensor, **others: Tensor | None) -> None:
    for name, tensor in others.items():
        if tensor is None:
            continue
        if tensor.dtype != reference.dtype:
            raise InputShapeError(
                f"{name} has dtype {tensor.dtype} but {reference_name} has {reference.dtype}; "
                f"cast one of them, e.g. {name}.to({reference_name}.dtype)."
            )
        if tensor.device != reference.device:
            raise InputShapeError(
                f"{name} is on {tensor.device} but {reference_name} is on {reference.device}; "
                f"move it with {name}.to({reference_name}.device)."
            )


def check_encode_inputs(x: Tensor, W_enc: Tensor, b_enc: Tensor | None, k: int) -> None:
    """Raise a library error unless ``encode_topk``'s arguments fit together."""
    if not x.is_floating_point():
        raise InputShapeError(f"x has dtype {x.dtype}; encode_topk needs a floating-point input, e.g. x.float().")
    if W_enc.ndim != 2:
        raise InputShapeError(f"W_enc has shape {tuple(W_enc.shape)}; it must be 2-D [d_in, d_sae].")
    d_in, d_sae = W_enc.shape
    if x.ndim == 0 or x.shape[-1] != d_in:
        raise InputShapeError(
            f"x has shape {tuple(x.shape)} but W_enc is [d_in={d_in}, d_sae={d_sae}]; "
            f"x's last dimension must be {d_in} (W_enc is laid out [d_in, d_sae], transpose it if it is [d_sae, d_in])."
        )
    if b_enc is not None and tuple(b_enc.shape) != (d_sae,):
        raise InputShapeError(f"b_enc has shape {tuple(b_enc.shape)}; it must be [{d_sae}] (one bias per latent).")
    _same_dtype_and_device("x", x, W_enc=W_enc, b_enc=b_enc)
    if isinstance(k, bool) or not isinstance(k, int):
        raise ConfigError(f"k={k!r} must be a Python int between 1 and d_sae={d_sae}.")
    if not 1 <= k <= d_sae:
        raise ConfigError(f"k={k} is out of range; choose 1 <= k <= d_sae={d_sae}.")


def check_decode_inputs(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor | None) -> None:
    """Raise a library error unless ``decode_topk``'s arguments fit together."""
    if indices.dtype not in (torch.int64, torch.int32):
        raise InputShapeError(
            f"indices has dtype {indices.dtype}; latent indices must be integers, e.g. indices.long()."
        )
    if values.shape != indices.shape or values.ndim == 0:
        raise InputShapeError(
            f"values has shape {tuple(values.shape)} but indices has {tuple(indices.shape)}; "
            "both must be [..., k] with the same shape (as returned by encode_topk)."
        )
    if W_dec.ndim != 2:
        raise InputShapeError(f"W_dec has shape {tuple(W_dec.shape)}; it must be 2-D [d_sae, d_in].")
    d_in = W_dec.shape[1]
    if b_dec is not None and tuple(b_dec.shape) != (d_in,):
        raise InputShapeError(f"b_dec has shape {tuple(b_dec.shape)}; it must be [{d_in}] (W_dec is [d_sae, {d_in}]).")
    _same_dtype_and_device("W_dec", W_dec, values=values, b_dec=b_dec)
    if indices.device != W_dec.device:
        raise InputShapeError(
            f"indices is on {indices.device} but W_dec is on {W_dec.device}; move it with indices.to(W_dec.device)."
        )


def check_chunk_size(chunk_size: int | None) -> None:
    """Raise ``ConfigError`` unless ``chunk_size`` is ``None`` or a positive int."""
    if chunk_size is not None:
        positive_int("chunk_size", chunk_size, "Pass the latents per chunk, or None.")
