"""CUDA: the safe default dispatch and the bfloat16-autocast path, checked everywhere (on CUDA where present).

Run on a GPU machine with ``pytest -m cuda``. Without a GPU every test marked ``cuda`` is skipped and says why.
"""

from __future__ import annotations

import types

import pytest
import torch
from kernel_reference import TOLERANCE, assert_topk_matches, error_scale

from vit_sae_hooks import kernels
from vit_sae_hooks.kernels import decode_topk, encode_topk, resolved_backend, use_backend

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device here (torch.cuda.is_available() is False); run on a GPU machine: pytest -m cuda"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def on_cuda(test):
    """Mark ``test`` as a CUDA test, skipped with the reason where no GPU is present."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)(test))


CUDA_MARKS = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)]


def _skip_unless_backend_runs(backend: str) -> None:
    if backend == "triton":
        pytest.importorskip("triton", reason="triton is not installed; backend='triton' cannot run")
    if backend == "native" and not kernels.native.available():
        pytest.skip(f"the native CPU kernel is unavailable: {kernels.native.status()}")


# ---------------------------------------------------------------- dispatch (runs everywhere)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_auto_runs_the_plain_torch_path_on_cuda_until_gpu_results_land(dtype):
    # A stand-in for a CUDA tensor: dispatch reads only the device, dtype and shape, so the rule is checked
    # on machines without a GPU too.
    cuda_tensor = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), dtype=dtype, shape=(16384, 768))
    assert resolved_backend(cuda_tensor, 49152) == "torch"
    assert resolved_backend(cuda_tensor, 1 << 30) == "torch"  # no chunking on CUDA either
    with use_backend("triton"):
        assert resolved_backend(cuda_tensor, 49152) == "triton"
    assert resolved_backend(cuda_tensor, 49152, backend="compile") == "compile"


@on_cuda
def test_auto_on_a_real_cuda_tensor_is_torch():
    for dtype in FLOAT_DTYPES:
        assert resolved_backend(torch.zeros(4, 8, device="cuda", dtype=dtype), 64) == "torch"


@pytest.mark.parametrize(
    ("device", "backend"),
    [("cpu", "torch"), ("cpu", "chunked"), ("cpu", "native"),
     *(pytest.param("cuda", backend, marks=CUDA_MARKS) for backend in ("torch", "chunked", "triton"))],
)
def test_encode_under_bfloat16_autocast_returns_the_inputs_dtype_and_decodes(device, backend):
    # The trainer runs the objective under bfloat16 autocast on CUDA: the encoder's GEMM may then run in
    # bfloat16, and the decode must still accept the values (it used to raise on the torch path).
    _skip_unless_backend_runs(backend)
    x, W_enc, b_enc = (t.to(device).requires_grad_(True) for t in _float_problem(9, 24, 40 * 32, seed=3))
    W_dec = (torch.randn(40 * 32, 24, generator=torch.Generator().manual_seed(4)) / 5).to(device).requires_grad_(True)
    with torch.autocast(device, dtype=torch.bfloat16):
        values, indices = encode_topk(x, W_enc, b_enc, 6, backend=backend)
        recon = decode_topk(values, indices, W_dec, None, backend=backend)
    assert values.dtype == recon.dtype == torch.float32
    recon.square().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in (x, W_enc, b_enc, W_dec))
    pre = x.detach().double() @ W_enc.detach().double() + b_enc.detach().double()
    # The GEMM saw bfloat16 inputs: selection and values are right to bfloat16's tolerance.
    atol = TOLERANCE[torch.bfloat16] * error_scale(x.detach(), W_enc.detach(), b_enc.detach())
    assert_topk_matches(values.detach().cpu(), indices.cpu(), pre.cpu(), 6, True, atol)


def _float_problem(n: int, d_in: int, d_sae: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d_in, generator=generator), torch.randn(d_in, d_sae, generator=generator) / d_in**0.5,
            0.1 * torch.randn(d_sae, generator=generator))
