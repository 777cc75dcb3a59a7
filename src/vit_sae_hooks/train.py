"""Deprecated: ``python -m vit_sae_hooks.train`` is now ``python -m vit_sae_hooks.training`` (same options),
and the training API lives in :mod:`vit_sae_hooks.training`.

Example:
    >>> from vit_sae_hooks.training import TrainConfig, train_sae
"""

import sys
import warnings

from vit_sae_hooks.training import CachedActivations, ImageActivations, TensorActivations, TrainConfig, train_sae
from vit_sae_hooks.training.cli import main

warnings.warn(
    "vit_sae_hooks.train is deprecated; use vit_sae_hooks.training (python -m vit_sae_hooks.training for the command)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["CachedActivations", "ImageActivations", "TensorActivations", "TrainConfig", "main", "train_sae"]

if __name__ == "__main__":
    sys.exit(main())
