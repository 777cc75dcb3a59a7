"""CUDA: the safe default dispatch, checked everywhere (the CUDA checks themselves are skipped without a GPU).

Run on a GPU machine with ``pytest -m cuda``. Without a GPU every test marked ``cuda`` is skipped and says why.
"""

from __future__ import annotations

import types

import pytest
import torch

from vit_sae_hooks.kernels import resolved_backend, use_backend

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device here (torch.cuda.is_available() is False); run on a GPU machine: pytest -m cuda"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def on_cuda(test):
    """Mark ``test`` as a CUDA test, skipped with the reason where no GPU is present."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)(test))


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
