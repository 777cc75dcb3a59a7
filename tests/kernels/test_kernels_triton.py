"""Triton kernels against the float64 dense reference: on CUDA when present, else under TRITON_INTERPRET=1 on CPU.

The interpreter is slow (each program is emulated in NumPy), so shapes are tiny; they still
cover several latent blocks, ragged tails, k = d_sae, missing biases and every dtype.
"""

from __future__ import annotations

import functools

import pytest
import torch

# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU, before triton is imported anywhere.
pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]'); Triton kernels untested")

from hypothesis import given, settings
from hypothesis import strategies as st

from vit_sae_hooks.kernels import cpu, decode_topk, encode_topk

from helpers.kernel_reference import check_encode_decode

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
encode_triton = functools.partial(encode_topk, backend="triton")
decode_triton = functools.partial(decode_topk, backend="triton")


def _on_device(function):
    """Run a CPU-built problem through ``function`` on DEVICE and bring results back, keeping autograd."""

    @functools.wraps(function)
    def wrapper(*tensors_then_rest):
        moved = [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in tensors_then_rest]
        result = function(*moved)
        if isinstance(result, tuple):
            return tuple(r.cpu() for r in result)
        return result.cpu()

    return wrapper


@pytest.mark.parametrize(
    ("n", "d_in", "d_sae", "k", "dtype", "apply_relu", "with_bias"),
    [
        (5, 7, 40, 3, torch.float32, True, True),
        (9, 33, 130, 8, torch.float32, False, True),
        (3, 20, 17, 17, torch.float32, True, False),
        (17, 24, 70, 5, torch.bfloat16, True, True),
        (4, 12, 50, 4, torch.float16, False, False),
        (0, 8, 20, 2, torch.float32, True, True),
    ],
)
def test_triton_encode_decode_matches_dense_reference(n, d_in, d_sae, k, dtype, apply_relu, with_bias):
    check_encode_decode(
        _on_device(encode_triton), _on_device(decode_triton), n, d_in, d_sae, k, dtype, 7, apply_relu, with_bias
    )


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(1, 6),
    d_in=st.integers(1, 19),
    k=st.integers(1, 6),
    extra_latents=st.integers(0, 60),
    seed=st.integers(0, 2**31),
)
def test_triton_random_shapes_match_dense_reference(n, d_in, k, extra_latents, seed):
    check_encode_decode(
        _on_device(encode_triton), _on_device(decode_triton), n, d_in, k + extra_latents, k, torch.float32, seed
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_primitives_equal_torch_primitives(dtype):
    from vit_sae_hooks.kernels import triton_decode

    generator = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 37, (11, 6), generator=generator)
    indices[0] = 5  # repeated latents in one row must add up
    weights = torch.randn(11, 6, generator=generator).to(dtype)
    table = torch.randn(37, 150, generator=generator).to(dtype)
    rows = torch.randn(11, 150, generator=generator).to(dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for name, args in [
        ("gather_sum", (indices, weights, table)),
        ("gather_dot", (indices, rows, table)),
        ("scatter_outer", (indices, weights, rows, 37)),
    ]:
        expected = getattr(cpu, name)(*args).double()
        actual = _on_device(getattr(triton_decode, name))(*args).double()
        torch.testing.assert_close(actual, expected, atol=tolerance * float(expected.abs().max()), rtol=0, msg=name)
