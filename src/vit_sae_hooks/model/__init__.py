"""The hooked vision transformer: config, components, model, checkpoint loaders and splicing."""

from vit_sae_hooks._tl import run_every_hook
from vit_sae_hooks.model.config import HookedViTConfig
from vit_sae_hooks.model.hooked_vit import HookedViT, ViTActivationCache

__all__ = ["HookedViT", "HookedViTConfig", "ViTActivationCache", "run_every_hook"]
