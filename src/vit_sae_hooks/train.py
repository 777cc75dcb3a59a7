"""``python -m vit_sae_hooks.train ...``, also under ``torchrun --nproc_per_node N -m vit_sae_hooks.train ...``.

The options are those of ``vit-sae train``; the training API is re-exported here.

Example:
    >>> from vit_sae_hooks.train import TrainConfig, train_sae
"""

import sys

from vit_sae_hooks.training import CachedActivations, ImageActivations, TensorActivations, TrainConfig, train_sae
from vit_sae_hooks.training.cli import main

__all__ = ["CachedActivations", "ImageActivations", "TensorActivations", "TrainConfig", "main", "train_sae"]

if __name__ == "__main__":
    sys.exit(main())
