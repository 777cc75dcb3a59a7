"""Experiments on a HookedViT with SAEs: splicing, feature interventions and patching.

Example:
    >>> from vit_sae_hooks.experiments import ablate_features, patching
"""

from vit_sae_hooks.experiments import patching
from vit_sae_hooks.experiments.interventions import (
    ablate_features,
    clamp_features,
    scale_features,
    set_features,
    steer,
)

__all__ = ["ablate_features", "clamp_features", "patching", "scale_features", "set_features", "steer"]
