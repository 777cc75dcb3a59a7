"""Sparse TopK encode/decode: the two functions every SAE calls, dispatched per call on device and dtype.

Contract (stable; faster backends plug in behind it):

- ``encode_topk(x, W_enc, b_enc, k, apply_relu=True) -> (values, indices)``:
  ``pre = x @ W_enc + b_enc``; the ``k`` largest entries of ``pre`` along the last axis;
  ReLU applied to those ``k`` values only when ``apply_relu``. ``x`` is ``[..., d_in]``;
  ``values`` is ``[..., k]`` in ``x``'s dtype, ``indices`` ``[..., k]`` int64.
- ``decode_topk(values, indices, W_dec, b_dec) -> [..., d_in]``:
  ``sum_j values[..., j] * W_dec[indices[..., j]] + b_dec`` without a dense ``[N, d_sae]`` tensor.
- ``encode_batch_topk(x, W_enc, b_enc, k, apply_relu=True)``: the ``int(k · N)`` largest pre-activations of
  a whole batch (BatchTopK training) as a padded sparse code, built on ``encode_topk`` (``batch_topk.py``).

Both are differentiable with sparse backward passes (see ``autograd.py``). The keyword-only
``backend`` picks the implementation; ``"auto"`` decides on every call from the tensors:

- ``"native"``: float32 CPU: one GEMM into a reused workspace, then a C++ SIMD top-k pass that
  adds the bias (compiled on first use; see ``native.py``), ``embedding_bag`` decode;
- ``"torch"``: one GEMM + bias, two-stage top-k, ``embedding_bag`` decode (any device);
- ``"chunked"``: the same, ``chunk_size`` latents at a time (peak extra memory ``N * chunk_size``);
- ``"compile"``: the torch encode under ``torch.compile`` (opt-in; ~20 s cold compile on CPU);
- ``"triton"``: fused GEMM + top-k epilogue and Triton sparse decode/backward (CUDA tensors;
  CPU only under ``TRITON_INTERPRET=1``, for testing).

``"auto"`` is ``"native"`` for float32 CPU tensors when its kernel builds (``native.status()``
says why not), ``"chunked"`` on CPU once the dense pre-activations would exceed
``AUTO_CHUNK_ELEMENTS``, ``"torch"`` otherwise, CUDA included: there it is one cuBLAS GEMM + bias,
``torch.topk``, ReLU on the k values and an ``embedding_bag`` decode, the path least likely to be
wrong, until GPU measurements show the Triton kernels correct and faster per dtype and shape
(docs/performance.md). ``resolved_backend`` says which one a call would run. Any input
preprocessing (subtracting ``b_dec``, normalisation) is the SAE module's job.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.kernels import cpu, native
from vit_sae_hooks.kernels.autograd import KernelSet, SparseDecode, TopKEncode
from vit_sae_hooks.kernels.batch_topk import batch_topk_count, encode_batch_topk, smallest_kept
from vit_sae_hooks.kernels.relu_decode import decode_dense_or_sparse
from vit_sae_hooks.kernels.validation import check_chunk_size, check_decode_inputs, check_encode_inputs

__all__ = [
    "AUTO_CHUNK_ELEMENTS",
    "Backend",
    "batch_topk_count",
    "decode_dense_or_sparse",
    "decode_topk",
    "encode_batch_topk",
    "encode_topk",
    "resolved_backend",
    "smallest_kept",
    "use_backend",
]

Backend = Literal["auto", "native", "torch", "chunked", "compile", "triton"]

# Above this many pre-activation elements (N * d_sae; 2^30 floats = 4 GiB in float32) "auto"
# encodes in latent chunks on CPU. Below it one GEMM is faster (bench_sae.py: chunks of 4096
# latents cost 2x, of 16384 about 1x at N 1600, d_sae 49152), and the dense block still fits.
AUTO_CHUNK_ELEMENTS = 1 << 30
DEFAULT_CHUNK_SIZE = 16384
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_BACKENDS = ("auto", "native", "torch", "chunked", "compile", "triton")


@functools.cache
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _torch_kernels(encode_forward=cpu.encode_forward, name: str = "torch") -> KernelSet:
    return KernelSet(
        name=name,
        encode_forward=encode_forward,
        gather_sum=cpu.gather_sum,
        gather_dot=cpu.gather_dot,
        scatter_outer=cpu.scatter_outer,
    )


# What backend="auto" means inside a ``use_backend`` block; "auto" outside one.
_PREFERRED_BACKEND: ContextVar[str] = ContextVar("vit_sae_hooks_kernel_backend", default="auto")


def _check_backend(backend: str) -> None:
    if backend not in _BACKENDS:
        raise ConfigError(f"backend={backend!r} is unknown; choose one of {', '.join(map(repr, _BACKENDS))}.")


@contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Make every ``backend="auto"`` call (all an SAE makes) use ``backend`` inside a ``with`` block.

    Only the SAE's encode/decode change; the hooked model and every hook run as usual.

    Example:
        >>> with use_backend("compile"):
        ...     logits = model.run_with_saes(images, saes=[sae])
    """
    _check_backend(backend)
    token = _PREFERRED_BACKEND.set(backend)
    try:
        yield
    finally:
        _PREFERRED_BACKEND.reset(token)


def _native_fits(tensor: Tensor) -> bool:
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32


def _native_usable(tensor: Tensor) -> bool:
    return _native_fits(tensor) and native.available()


def _resolve_backend(backend: str, tensor: Tensor, n_pre_elements: int) -> str:
    _check_backend(backend)
    if backend == "auto":
        backend = _PREFERRED_BACKEND.get()
    if backend != "auto":
        return backend
    if _native_usable(tensor):
        return "native"  # row blocks bound its memory, so it never needs "chunked"
    if not tensor.is_cuda and n_pre_elements > AUTO_CHUNK_ELEMENTS:
        return "chunked"
    return "torch"


def resolved_backend(x: Tensor, d_sae: int, backend: Backend = "auto") -> str:
    """The backend an ``encode_topk`` call on ``x`` with ``d_sae`` latents runs, ``use_backend`` blocks included.

    Example:
        >>> resolved_backend(torch.randn(1600, 768, device="cuda"), 49152)
        'torch'
    """
    return _resolve_backend(backend, x, math.prod(x.shape[:-1]) * d_sae)


def _kernels_for(backend: str, tensor: Tensor, n_pre_elements: int, chunk_size: int | None) -> KernelSet:
    """The KernelSet for this call: decided from the tensor's device and dtype every time."""
    check_chunk_size(chunk_size)
    resolved = _resolve_backend(backend, tensor, n_pre_elements)
    if resolved == "torch":
        return _torch_kernels()
    if resolved == "native":
        if not _native_fits(tensor):
            raise ConfigError(
                f"backend='native' runs float32 CPU tensors, got {tensor.dtype} on {tensor.device}; "
                "use backend='auto' (or 'torch')."
            )
        if not native.available():
            raise ConfigError(f"backend='native' is unavailable: {native.status()}. Use backend='torch'.")
        return _torch_kernels(native.encode_forward, "native")
    if resolved == "chunked":
        size = chunk_size or DEFAULT_CHUNK_SIZE
        chunked = native.encode_forward_chunked if _native_usable(tensor) else cpu.encode_forward_chunked
        return _torch_kernels(functools.partial(chunked, chunk_size=size), "chunked")
    if resolved == "compile":
        from vit_sae_hooks.kernels.compiled import compiled_encode_forward

        return _torch_kernels(compiled_encode_forward, "compile")
    if not _triton_importable():
        raise ConfigError("backend='triton' needs the triton package; install it (pip install triton) or use backend='torch'.")
    if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(
            f"backend='triton' needs CUDA tensors (got {tensor.device}); use backend='torch' on CPU, "
            "or set TRITON_INTERPRET=1 before importing triton to emulate the kernels slowly."
        )
    if tensor.dtype not in _TRITON_DTYPES:
        raise ConfigError(
            f"backend='triton' supports float32, bfloat16 and float16, not {tensor.dtype}; use backend='torch'."
        )
    # Imported here, not at module import: the Triton modules must see TRITON_INTERPRET as set at call time.
    from vit_sae_hooks.kernels import triton_decode, triton_encode

    return KernelSet(
        name="triton",
        encode_forward=triton_encode.encode_forward,
        gather_sum=triton_decode.gather_sum,
        gather_dot=triton_decode.gather_dot,
        scatter_outer=triton_decode.scatter_outer,
    )


def encode_topk(
    x: Float[Tensor, "*batch d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"] | None,
    k: int,
    apply_relu: bool = True,
    *,
    backend: Backend = "auto",
    chunk_size: int | None = None,
) -> tuple[Float[Tensor, "*batch k"], Int[Tensor, "*batch k"]]:
    """Top-``k`` latent values and indices of ``x @ W_enc + b_enc`` (ReLU on the k values), differentiable.

    Example:
        >>> values, indices = encode_topk(torch.randn(4, 8), torch.randn(8, 32), None, k=3)

    Indices come back in no particular order; ties between equal pre-activations are broken
    arbitrarily. ``chunk_size`` (latents per step) applies to ``backend="chunked"``.
    """
    check_encode_inputs(x, W_enc, b_enc, k)
    leading = x.shape[:-1]
    flat_x = x.reshape(-1, x.shape[-1])
    kernels = _kernels_for(backend, x, flat_x.shape[0] * W_enc.shape[1], chunk_size)
    values, indices = TopKEncode.apply(flat_x, W_enc, b_enc, k, apply_relu, kernels)
    return values.reshape(*leading, k), indices.reshape(*leading, k)


def decode_topk(
    values: Float[Tensor, "*batch k"],
    indices: Int[Tensor, "*batch k"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"] | None,
    *,
    backend: Backend = "auto",
) -> Float[Tensor, "*batch d_in"]:
    """Reconstruction ``sum_j values[j] * W_dec[indices[j]] (+ b_dec)`` by a sparse gather, differentiable.

    Example:
        >>> out = decode_topk(torch.rand(4, 3), torch.randint(0, 32, (4, 3)), torch.randn(32, 8), None)
    """
    check_decode_inputs(values, indices, W_dec, b_dec)
    leading = values.shape[:-1]
    k = values.shape[-1]
    # Decode never builds [N, d_sae], so "chunked" and "compile" share the torch decode.
    kernels = _kernels_for(backend, W_dec, 0, None)
    out = SparseDecode.apply(values.reshape(-1, k), indices.reshape(-1, k).long(), W_dec, b_dec, kernels)
    return out.reshape(*leading, W_dec.shape[-1])
