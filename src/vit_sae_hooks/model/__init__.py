"""The hooked vision transformer: config, components, model and checkpoint loaders."""

from vit_sae_hooks.model.config import HookedViTConfig
from vit_sae_hooks.model.hooked_vit import HookedViT

__all__ = ["HookedViT", "HookedViTConfig"]
