"""The torch encode under ``torch.compile`` (opt-in via ``backend="compile"``).

Only this function is compiled, never the hooked model: a compiled model would silently skip
hooks added after compilation. The compiled graph is the forward only; the backward is the
hand-written sparse one in ``autograd.py``, so compiling cannot densify training.
"""

from __future__ import annotations

import functools

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_sae_hooks.kernels import cpu


@functools.cache
def _compiled_encode():
    # Built on first use, not at import: compiling costs ~20 s cold and most users never opt in.
    return torch.compile(cpu.encode_forward, dynamic=False)


def compiled_encode_forward(
    x: Float[Tensor, "n d_in"], W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, " d_sae"] | None, k: int
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """``cpu.encode_forward`` compiled by inductor (GEMM + bias + top-k), same results as eager.

    Example:
        >>> values, indices = compiled_encode_forward(torch.randn(4, 8), torch.randn(8, 32), None, 3)
    """
    return _compiled_encode()(x, W_enc, b_enc, k)
