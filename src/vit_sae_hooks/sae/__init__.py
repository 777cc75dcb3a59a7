"""Sparse autoencoders: the :class:`SAE` module, its :class:`SAEConfig`, and readers for published layouts."""

from vit_sae_hooks.sae.config import SAEConfig
from vit_sae_hooks.sae.normalization import NormStats
from vit_sae_hooks.sae.sae import SAE

__all__ = ["SAE", "NormStats", "SAEConfig"]
