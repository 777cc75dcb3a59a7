"""Sparse autoencoders: the :class:`SAE` module (one subclass per architecture), its :class:`SAEConfig`,
readers for published layouts and the registry of published SAEs.

Example:
    >>> from vit_sae_hooks.sae import SAE, SAEConfig
    >>> sae = SAE(SAEConfig(d_in=64, d_sae=256, architecture="topk", k=8))
"""

from vit_sae_hooks.sae.architectures import (
    BatchTopKSAE,
    GatedSAE,
    JumpReLUSAE,
    MatryoshkaSAE,
    ReLUSAE,
    TopKSAE,
    Transcoder,
)
from vit_sae_hooks.sae.config import SAEConfig
from vit_sae_hooks.sae.normalization import NormStats
from vit_sae_hooks.sae.registry import architecture_class, architecture_names
from vit_sae_hooks.sae.sae import SAE, TrainingBatch, TrainingTerms

__all__ = [
    "SAE",
    "BatchTopKSAE",
    "GatedSAE",
    "JumpReLUSAE",
    "MatryoshkaSAE",
    "NormStats",
    "ReLUSAE",
    "SAEConfig",
    "TopKSAE",
    "TrainingBatch",
    "TrainingTerms",
    "Transcoder",
    "architecture_class",
    "architecture_names",
]
