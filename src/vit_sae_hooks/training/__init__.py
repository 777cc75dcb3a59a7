"""Training SAEs on any hook of a HookedViT: activation sources, an on-disk cache, the trainer and its CLI.

Example:
    >>> from vit_sae_hooks.training import ImageActivations, TrainConfig, train_sae
    >>> sae = train_sae(ImageActivations(model, "blocks.9.hook_resid_post", images), TrainConfig(k=32), out="runs/l9")
"""

from vit_sae_hooks.tokens import select_tokens
from vit_sae_hooks.training.activations import (
    BlockStream,
    ImageActivations,
    TensorActivations,
    hook_activations,
    hook_columns,
)
from vit_sae_hooks.training.cache import CachedActivations, write_activation_cache
from vit_sae_hooks.training.config import TrainConfig
from vit_sae_hooks.training.trainer import geometric_median, train_sae, train_saes

__all__ = [
    "BlockStream",
    "CachedActivations",
    "ImageActivations",
    "TensorActivations",
    "TrainConfig",
    "geometric_median",
    "hook_activations",
    "hook_columns",
    "select_tokens",
    "train_sae",
    "train_saes",
    "write_activation_cache",
]
