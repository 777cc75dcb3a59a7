"""Float64 dense references and tie-robust comparisons shared by the kernel tests."""

from __future__ import annotations

import torch
from torch import Tensor

# Elementwise error allowed, as a fraction of the largest |x| @ |W| (+ |b|) magnitude in the problem.
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def make_encoder_problem(n: int, d_in: int, d_sae: int, dtype: torch.dtype, seed: int, with_bias: bool = True):
    """Random ``x, W_enc, b_enc`` in ``dtype`` (continuous values, so exact ties are measure-zero in float64)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=generator, dtype=torch.float64)
    W_enc = torch.randn(d_in, d_sae, generator=generator, dtype=torch.float64) / max(d_in, 1) ** 0.5
    b_enc = 0.1 * torch.randn(d_sae, generator=generator, dtype=torch.float64) if with_bias else None
    cast = [t.to(dtype) if t is not None else None for t in (x, W_enc, b_enc)]
    return cast


def reference_pre(x: Tensor, W_enc: Tensor, b_enc: Tensor | None) -> Tensor:
    """Pre-activations in float64 from the (already rounded) inputs."""
    pre = x.double() @ W_enc.double()
    return pre + b_enc.double() if b_enc is not None else pre


def error_scale(x: Tensor, W_enc: Tensor, b_enc: Tensor | None) -> float:
    """The largest magnitude a rounding error in the encoder GEMM scales with."""
    magnitude = x.double().abs() @ W_enc.double().abs()
    if b_enc is not None:
        magnitude = magnitude + b_enc.double().abs()
    return float(magnitude.max()) if magnitude.numel() else 1.0


def assert_topk_matches(
    values: Tensor, indices: Tensor, pre: Tensor, k: int, apply_relu: bool, atol: float
) -> None:
    """Check a top-k selection against float64 pre-activations, treating near-ties as either choice.

    - indices are distinct and in range in every row;
    - the selected latents' float64 pre-activations equal the true top-k values (sorted) within atol,
      so swapping two latents whose values differ by less than atol is accepted;
    - rows whose k-th and (k+1)-th true values differ by more than 2 * atol select exactly the true set;
    - each returned value equals (ReLU of) its own latent's float64 pre-activation within atol.
    """
    n, d_sae = pre.shape
    assert values.shape == indices.shape == (n, k)
    assert indices.dtype == torch.int64
    if n == 0:
        return
    assert int(indices.min()) >= 0 and int(indices.max()) < d_sae
    for row in indices.tolist():
        assert len(set(row)) == k, f"duplicate latent in {row}"
    true_sorted = pre.sort(dim=1, descending=True).values
    chosen = pre.gather(1, indices)
    torch.testing.assert_close(chosen.sort(dim=1, descending=True).values, true_sorted[:, :k], atol=atol, rtol=0)
    if k < d_sae:
        clear_rows = (true_sorted[:, k - 1] - true_sorted[:, k]) > 2 * atol
        true_indices = pre.topk(k, dim=1).indices
        for row in clear_rows.nonzero().flatten().tolist():
            assert set(indices[row].tolist()) == set(true_indices[row].tolist())
    expected_values = chosen.relu() if apply_relu else chosen
    torch.testing.assert_close(values.double(), expected_values, atol=atol, rtol=0)


def assert_close_scaled(
    actual: Tensor | None, expected: Tensor, tolerance: float, name: str, scale: float | None = None
) -> None:
    """``|actual - expected| <= tolerance * scale`` elementwise; ``scale`` defaults to ``max|expected|``.

    A sum whose terms cancel has rounding errors of the size of its terms, not of the sum: pass the largest
    sum of absolute terms as ``scale`` for such results (gradients summed over many rows).
    """
    assert actual is not None, f"{name}: no gradient"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if scale is None:
        scale = float(expected.detach().abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=tolerance * max(scale, 1e-12), rtol=0, msg=lambda m: f"{name}: {m}"
    )


def check_encode_decode(
    encode, decode, n: int, d_in: int, d_sae: int, k: int, dtype: torch.dtype, seed: int,
    apply_relu: bool = True, with_bias: bool = True,
) -> None:
    """Run ``encode`` then ``decode`` (forward and backward) against the float64 dense reference.

    The reference backward is computed at the latents our forward selected, so near-ties (checked
    separately by ``assert_topk_matches``) cannot make the gradient comparison flaky.
    """
    x, W_enc, b_enc = make_encoder_problem(n, d_in, d_sae, dtype, seed, with_bias)
    generator = torch.Generator().manual_seed(seed + 1)
    W_dec = (torch.randn(d_sae, d_in, generator=generator, dtype=torch.float64) / d_in**0.5).to(dtype)
    b_dec = torch.randn(d_in, generator=generator, dtype=torch.float64).to(dtype)
    grad_recon = torch.randn(n, d_in, generator=generator, dtype=torch.float64).to(dtype)
    grad_values = torch.randn(n, k, generator=generator, dtype=torch.float64).to(dtype)
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in (x, W_enc, b_enc, W_dec, b_dec)]
    values, indices = encode(leaves[0], leaves[1], leaves[2], k, apply_relu)
    assert values.dtype == dtype
    tolerance = TOLERANCE[dtype]
    atol = tolerance * error_scale(x, W_enc, b_enc)
    assert_topk_matches(values.detach(), indices, reference_pre(x, W_enc, b_enc), k, apply_relu, atol)
    recon = decode(values, indices, leaves[3], leaves[4])
    assert recon.dtype == dtype and recon.shape == (n, d_in)
    ((recon * grad_recon).sum() + (values * grad_values).sum()).backward()

    ref_leaves = [t.double().requires_grad_(True) if t is not None else None for t in (x, W_enc, b_enc, W_dec, b_dec)]
    ref_pre = ref_leaves[0] @ ref_leaves[1] + (ref_leaves[2] if with_bias else 0)
    chosen = ref_pre.gather(1, indices)
    if apply_relu:
        # The mask comes from our forward: values within atol of 0 may legitimately land either side.
        chosen = chosen * (values.detach() > 0)
    # The dense reference as peers write it: scatter the k values into zeros, then a dense decode.
    dense_acts = torch.zeros(n, d_sae, dtype=torch.float64).scatter(1, indices, chosen)
    ref_recon = dense_acts @ ref_leaves[3] + ref_leaves[4]
    assert_close_scaled(recon.detach(), ref_recon.detach(), 4 * tolerance, "reconstruction")
    ref_pre.retain_grad()
    ((ref_recon * grad_recon.double()).sum() + (chosen * grad_values.double()).sum()).backward()
    # Each gradient is a sum of products; its rounding error scales with the sum of their absolute values. The
    # pre-activation gradient is itself such a sum (the values' own gradient plus the decoder's), rounded to
    # the working dtype before it multiplies W_enc, so its scale is the sum of its terms' magnitudes.
    upstream = grad_recon.double().abs()
    value_terms = grad_values.double().abs() + (upstream @ ref_leaves[3].detach().abs().T).gather(1, indices)
    if apply_relu:
        value_terms = value_terms * (values.detach() > 0)
    pre_grad = torch.zeros(n, d_sae, dtype=torch.float64).scatter(1, indices, value_terms)
    scales = {
        "x": pre_grad @ ref_leaves[1].detach().abs().T,
        "W_enc": ref_leaves[0].detach().abs().T @ pre_grad,
        "b_enc": pre_grad.sum(0),
        "W_dec": dense_acts.detach().abs().T @ upstream,
        "b_dec": upstream.sum(0),
    }
    names = ["x", "W_enc", "b_enc", "W_dec", "b_dec"]
    for name, ours, ref in zip(names, leaves, ref_leaves, strict=True):
        if ours is None:
            continue
        assert ours.grad is not None and ours.grad.dtype == dtype, name
        largest = [float(tensor.abs().max()) for tensor in (scales[name], ref.grad) if tensor.numel()]
        scale = max(largest, default=1.0)
        assert_close_scaled(ours.grad, ref.grad, 4 * tolerance, name, scale)
