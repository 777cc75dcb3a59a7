"""Fixtures shared by every test; plain helper functions live in ``tests/helpers``."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # Before anything imports triton (TransformerLens 3 does, through transformers): triton.jit reads this when
    # it decorates, and without a GPU the Triton kernels can only run in the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access: huggingface_hub answers from the cache only."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
