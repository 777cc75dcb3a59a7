"""vit_sae_hooks: hooked vision transformers and sparse autoencoders for mechanistic interpretability."""

from vit_sae_hooks import pretrained
from vit_sae_hooks.hook_names import get_act_name
from vit_sae_hooks.model import HookedViT, HookedViTConfig
from vit_sae_hooks.sae import SAE, NormStats, SAEConfig

__version__ = "0.1.0"

__all__ = ["SAE", "HookedViT", "HookedViTConfig", "NormStats", "SAEConfig", "get_act_name", "pretrained"]
