"""Batch-level top-k (BatchTopK) on every backend against the float64 dense selection over the flattened batch,
forward and backward, including batches where a few tokens own most of the winners."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vit_sae_hooks import kernels
from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.kernels import decode_topk, encode_batch_topk, native, smallest_kept

from helpers.kernel_reference import TOLERANCE, error_scale, make_encoder_problem, reference_pre

BACKENDS = ["torch", "chunked"] + (["native"] if native.available() else [])


def _dense(values, indices, d_sae):
    # Padding entries (value 0) may repeat an index, so they are added, not written.
    return torch.zeros(*values.shape[:-1], d_sae, dtype=values.dtype).scatter_add(-1, indices, values)


def _check_against_reference(x, W_enc, b_enc, k, apply_relu, backend, width=None):
    n, d_sae = x.shape[0], W_enc.shape[1]
    leaves = [t.clone().requires_grad_(True) for t in (x, W_enc, b_enc)]
    values, indices = encode_batch_topk(*leaves, k, apply_relu, backend=backend, width=width)
    total = min(int(k * n), n * d_sae)
    pre = reference_pre(x, W_enc, b_enc)
    scores = pre.relu() if apply_relu else pre
    atol = TOLERANCE[x.dtype] * error_scale(x, W_enc, b_enc)
    dense = _dense(values.detach(), indices, d_sae).double()
    kept = _dense(torch.ones_like(values, dtype=torch.float64) * (values.detach() != 0), indices, d_sae).bool()
    # Each kept value is its own latent's (ReLU'd) pre-activation; no latent is kept twice in a row.
    for row, row_values in zip(indices.tolist(), (values.detach() != 0).tolist(), strict=True):
        kept_here = [index for index, keep in zip(row, row_values, strict=True) if keep]
        assert len(set(kept_here)) == len(kept_here)
    torch.testing.assert_close(dense[kept], scores[kept], atol=atol, rtol=0)
    assert int(kept.sum()) <= total
    # The kept values are the batch's largest: equal, sorted, to the true top `total` (zeros fill up with ReLU).
    true_sorted = scores.flatten().sort(descending=True).values
    if apply_relu:
        ours_sorted = dense.flatten().sort(descending=True).values[:total]
    else:
        assert int(kept.sum()) == total
        ours_sorted = dense[kept].sort(descending=True).values
    torch.testing.assert_close(ours_sorted, true_sorted[:total], atol=atol, rtol=0)
    if total < n * d_sae and float(true_sorted[total - 1] - true_sorted[total]) > 2 * atol:
        reference = torch.zeros_like(scores).flatten()
        chosen = scores.flatten().topk(total).indices
        reference[chosen] = scores.flatten()[chosen]
        torch.testing.assert_close(dense, reference.view_as(scores), atol=atol, rtol=0)

    # Backward: the gradient of the kept (ReLU'd) pre-activations, against float64 autograd at our selection.
    generator = torch.Generator().manual_seed(7)
    upstream = torch.randn(n, d_sae, generator=generator, dtype=torch.float64)
    (_dense(values, indices, d_sae) * upstream.to(values.dtype)).sum().backward()
    ref_leaves = [t.double().requires_grad_(True) for t in (x, W_enc, b_enc)]
    ref_pre = ref_leaves[0] @ ref_leaves[1] + ref_leaves[2]
    passes = kept & (dense > 0) if apply_relu else kept
    (ref_pre * passes * upstream).sum().backward()
    for name, ours, ref in zip(("x", "W_enc", "b_enc"), leaves, ref_leaves, strict=True):
        scale = max(float(ref.grad.abs().max()), float((upstream.abs() * passes).sum(0).max()), 1.0)
        torch.testing.assert_close(ours.grad.double(), ref.grad, atol=4 * TOLERANCE[x.dtype] * scale * 8, rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")
    return values, indices


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40), d_sae=st.integers(4, 96), k_fraction=st.floats(0.01, 1.0), apply_relu=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_batch_topk_equals_the_dense_float64_selection(backend, n, d_sae, k_fraction, apply_relu, seed):
    k = max(k_fraction * d_sae, 0.5)
    x, W_enc, b_enc = make_encoder_problem(n, 16, d_sae, torch.float32, seed)
    _check_against_reference(x, W_enc, b_enc, k, apply_relu, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("apply_relu", [True, False])
def test_tokens_that_own_most_winners_get_wider_candidate_lists(backend, apply_relu):
    # Two tokens with large activations take almost all of the batch's 8 * 64 slots: their first 2k = 16
    # candidates are all kept, so the candidate list must grow (to 128 here) for the result to stay exact.
    x, W_enc, b_enc = make_encoder_problem(64, 16, 128, torch.float32, seed=3)
    x[:2] *= 50
    values, _ = _check_against_reference(x, W_enc, b_enc, 8, apply_relu, backend)
    assert values.shape[-1] > 16
    assert int((values[:2] != 0).sum()) > 2 * 16


def test_triton_backend_in_the_interpreter():
    pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]')")
    if not torch.cuda.is_available():
        import os

        assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets TRITON_INTERPRET=1 without CUDA"
    x, W_enc, b_enc = make_encoder_problem(12, 16, 40, torch.float32, seed=11)
    _check_against_reference(x, W_enc, b_enc, 3.5, True, "triton")


def test_leading_dimensions_width_and_decode():
    x, W_enc, b_enc = make_encoder_problem(34, 16, 64, torch.float32, seed=2)
    values, indices = encode_batch_topk(x.view(2, 17, 16), W_enc, b_enc, 4, width=10)
    assert values.shape == indices.shape and values.shape[:2] == (2, 17) and values.shape[-1] >= 10
    flat_values, flat_indices = encode_batch_topk(x, W_enc, b_enc, 4, width=10)
    torch.testing.assert_close(values.reshape(34, -1), flat_values)
    W_dec = torch.randn(64, 16)
    recon = decode_topk(values, indices, W_dec, None)
    torch.testing.assert_close(recon.reshape(34, 16), _dense(flat_values, flat_indices, 64) @ W_dec, atol=1e-5, rtol=0)


def test_empty_batch_and_bad_arguments():
    x, W_enc, b_enc = make_encoder_problem(0, 16, 64, torch.float32, seed=2)
    values, _ = encode_batch_topk(x, W_enc, b_enc, 4)
    assert values.shape == (0, 8)
    x, W_enc, b_enc = make_encoder_problem(3, 16, 64, torch.float32, seed=2)
    with pytest.raises(ConfigError, match="more than d_sae=64"):
        encode_batch_topk(x, W_enc, b_enc, 65)
    with pytest.raises(ConfigError, match="k must be greater than 0"):
        encode_batch_topk(x, W_enc, b_enc, 0)
    with pytest.raises(ConfigError, match="width must be a positive integer, got 0"):
        encode_batch_topk(x, W_enc, b_enc, 4, width=0)


def test_smallest_kept_needs_no_host_sync_and_ignores_zeros():
    assert float(smallest_kept(torch.tensor([[0.0, 3.0], [0.25, -1.0]]))) == 0.25
    assert math.isnan(float(smallest_kept(torch.zeros(2, 3))))
    assert kernels.batch_topk_count(16, 34, 256) == 544 and kernels.batch_topk_count(300, 2, 256) == 512
