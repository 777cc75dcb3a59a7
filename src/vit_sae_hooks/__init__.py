"""vit_sae_hooks: hooked vision transformers and sparse autoencoders for mechanistic interpretability."""

from vit_sae_hooks.hook_names import get_act_name
from vit_sae_hooks.model import HookedViT, HookedViTConfig

__version__ = "0.1.0"

__all__ = ["HookedViT", "HookedViTConfig", "get_act_name"]
