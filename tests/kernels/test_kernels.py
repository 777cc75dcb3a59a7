"""TopK encode/decode kernels on CPU (torch and chunked backends) against a float64 dense reference."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vit_sae_hooks import kernels
from vit_sae_hooks.errors import ConfigError, InputShapeError
from vit_sae_hooks.kernels import cpu, decode_dense_or_sparse, decode_topk, encode_topk

from helpers.kernel_reference import assert_close_scaled, check_encode_decode, make_encoder_problem

# Smallest d_sae per unit of k at which topk_last_dim takes its grouped (two-stage) path.
GROUPED = cpu._GROUPED_MIN_GROUPS_PER_K * cpu._TOPK_GROUP


@st.composite
def encoder_shapes(draw):
    """(n, d_in, d_sae, k): odd and non-power-of-two sizes, k = d_sae, and d_sae large enough for the grouped top-k."""
    k = draw(st.integers(1, 12))
    d_sae = draw(st.one_of(st.just(k), st.integers(k, 80), st.integers(GROUPED * k, GROUPED * k + 45)))
    return draw(st.integers(0, 9)), draw(st.integers(1, 37)), d_sae, k


def _encode(backend, chunk_size=None):
    return functools.partial(encode_topk, backend=backend, chunk_size=chunk_size)


def _decode(backend):
    return functools.partial(decode_topk, backend=backend)


@settings(max_examples=60, deadline=None)
@given(
    shape=encoder_shapes(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    apply_relu=st.booleans(),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_torch_backend_matches_dense_reference(shape, dtype, apply_relu, with_bias, seed):
    n, d_in, d_sae, k = shape
    check_encode_decode(_encode("torch"), _decode("torch"), n, d_in, d_sae, k, dtype, seed, apply_relu, with_bias)


@settings(max_examples=40, deadline=None)
@given(
    shape=encoder_shapes(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    chunk_fraction=st.floats(0.01, 1.2),
    seed=st.integers(0, 2**31),
)
def test_chunked_backend_matches_dense_reference(shape, dtype, chunk_fraction, seed):
    n, d_in, d_sae, k = shape
    chunk_size = max(1, int(chunk_fraction * d_sae))
    check_encode_decode(_encode("chunked", chunk_size), _decode("chunked"), n, d_in, d_sae, k, dtype, seed)


@settings(max_examples=30, deadline=None)
@given(
    n_groups_over_k=st.integers(cpu._GROUPED_MIN_GROUPS_PER_K, cpu._GROUPED_MIN_GROUPS_PER_K + 4),
    k=st.integers(1, 6),
    tail=st.integers(0, 31),
    seed=st.integers(0, 2**31),
)
def test_grouped_topk_equals_full_topk(n_groups_over_k, k, tail, seed):
    scores = torch.randn(5, n_groups_over_k * k * 32 + tail, generator=torch.Generator().manual_seed(seed))
    values, indices = cpu.topk_last_dim(scores, k)
    expected = scores.topk(k, dim=1)
    assert torch.equal(values.sort(dim=1).values, expected.values.sort(dim=1).values)
    assert torch.equal(indices.sort(dim=1).values, expected.indices.sort(dim=1).values)


def test_leading_batch_dimensions_are_preserved():
    x, W_enc, b_enc = make_encoder_problem(6, 10, 40, torch.float32, seed=0)
    values, indices = encode_topk(x.reshape(2, 3, 10), W_enc, b_enc, 5)
    assert values.shape == indices.shape == (2, 3, 5)
    flat_values, flat_indices = encode_topk(x, W_enc, b_enc, 5)
    assert torch.equal(indices.reshape(6, 5).sort(1).values, flat_indices.sort(1).values)
    W_dec = torch.randn(40, 10)
    out = decode_topk(values, indices, W_dec, None)
    assert out.shape == (2, 3, 10)
    torch.testing.assert_close(out.reshape(6, 10), decode_topk(flat_values, flat_indices, W_dec, None))


def test_decode_sums_duplicate_indices_and_scatters_their_gradients():
    values = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    indices = torch.tensor([[4, 4, 1]])
    W_dec = torch.randn(6, 5, requires_grad=True)
    out = decode_topk(values, indices, W_dec, None, backend="torch")
    torch.testing.assert_close(out[0], 3.0 * W_dec[4] + 3.0 * W_dec[1])
    out.sum().backward()
    expected_grad = torch.zeros(6, 5)
    expected_grad[4] = 3.0
    expected_grad[1] = 3.0
    torch.testing.assert_close(W_dec.grad, expected_grad)
    assert_close_scaled(values.grad, W_dec.detach()[indices[0]].sum(1, keepdim=True).T.double(), 1e-6, "values")


def test_auto_dispatch_is_decided_per_call(monkeypatch):
    x, W_enc, b_enc = make_encoder_problem(4, 8, 64, torch.float32, seed=1)
    # Without the native kernel (covered in test_kernels_native.py) auto chooses by size.
    monkeypatch.setattr(kernels.native, "available", lambda: False)
    assert kernels._kernels_for("auto", x, 4 * 64, None).name == "torch"
    monkeypatch.setattr(kernels, "AUTO_CHUNK_ELEMENTS", 100)
    assert kernels._kernels_for("auto", x, 4 * 64, None).name == "chunked"
    _, chunked_indices = encode_topk(x, W_enc, b_enc, 3)
    _, indices = encode_topk(x, W_enc, b_enc, 3, backend="torch")
    assert torch.equal(chunked_indices.sort(1).values, indices.sort(1).values)


@pytest.mark.parametrize("k", [0, -1, 65, 2.0, True])
def test_bad_k_is_a_config_error_naming_k(k):
    x, W_enc, b_enc = make_encoder_problem(2, 8, 64, torch.float32, seed=0)
    with pytest.raises(ConfigError, match=f"k={k!r}"):
        encode_topk(x, W_enc, b_enc, k)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, W, b: (x[:, :7], W, b), "last dimension must be 8"),
        (lambda x, W, b: (x, W, b[:10]), "b_enc has shape"),
        (lambda x, W, b: (x, W.double(), b), "W_enc has dtype torch.float64"),
        (lambda x, W, b: (x.long(), W, b), "floating-point"),
        (lambda x, W, b: (x, W[0], b), "must be 2-D"),
    ],
)
def test_mismatched_encoder_inputs_are_input_shape_errors(change, message):
    x, W_enc, b_enc = make_encoder_problem(2, 8, 64, torch.float32, seed=0)
    with pytest.raises(InputShapeError, match=message):
        encode_topk(*change(x, W_enc, b_enc), 4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda v, i, W, b: (v, i.float(), W, b), "must be integers"),
        (lambda v, i, W, b: (v[:, :2], i, W, b), "same shape"),
        (lambda v, i, W, b: (v.double(), i, W, b), "values has dtype torch.float64"),
        (lambda v, i, W, b: (v, i, W, b[:3]), "b_dec has shape"),
    ],
)
def test_mismatched_decoder_inputs_are_input_shape_errors(change, message):
    values, indices = torch.rand(2, 3), torch.randint(0, 10, (2, 3))
    with pytest.raises(InputShapeError, match=message):
        decode_topk(*change(values, indices, torch.randn(10, 5), torch.randn(5)))


def test_unknown_backend_and_bad_chunk_size_are_config_errors(monkeypatch):
    x, W_enc, b_enc = make_encoder_problem(2, 8, 64, torch.float32, seed=0)
    with pytest.raises(ConfigError, match="backend='cuda'"):
        encode_topk(x, W_enc, b_enc, 4, backend="cuda")
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer, got 0"):
        encode_topk(x, W_enc, b_enc, 4, backend="chunked", chunk_size=0)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="needs CUDA tensors"):
        encode_topk(x, W_enc, b_enc, 4, backend="triton")


@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 1.0])
@pytest.mark.parametrize("max_density", [0.0, 0.05, 1.0])
def test_dense_or_sparse_decode_equals_dense_gemm(density, max_density):
    generator = torch.Generator().manual_seed(3)
    acts = torch.randn(3, 4, 97, generator=generator).relu() * (torch.rand(3, 4, 97, generator=generator) < density)
    W_dec, b_dec = torch.randn(97, 13, generator=generator), torch.randn(13, generator=generator)
    out = decode_dense_or_sparse(acts, W_dec, b_dec, max_density=max_density)
    torch.testing.assert_close(out, acts @ W_dec + b_dec, atol=1e-5, rtol=1e-5)


def test_dense_or_sparse_decode_keeps_dense_gradient_wrt_acts():
    acts = torch.randn(4, 50).relu().requires_grad_(True)
    W_dec = torch.randn(50, 6)
    decode_dense_or_sparse(acts, W_dec, None, max_density=1.0).sum().backward()
    torch.testing.assert_close(acts.grad, W_dec.sum(1).expand(4, 50))


def test_compiled_backend_equals_eager_forward_and_backward():
    x, W_enc, b_enc = make_encoder_problem(6, 24, 4200, torch.float32, seed=5)
    W_dec = torch.randn(4200, 24)
    results = {}
    for backend in ("torch", "compile"):
        leaves = [t.clone().requires_grad_(True) for t in (x, W_enc, b_enc, W_dec)]
        values, indices = encode_topk(leaves[0], leaves[1], leaves[2], 7, backend=backend)
        order = indices.argsort(dim=1)
        values, indices = values.gather(1, order), indices.gather(1, order)
        decode_topk(values, indices, leaves[3], None, backend=backend).square().sum().backward()
        results[backend] = (values, indices, *(leaf.grad for leaf in leaves))
    assert torch.equal(results["torch"][1], results["compile"][1])
    for eager, compiled in zip(results["torch"], results["compile"], strict=True):
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
