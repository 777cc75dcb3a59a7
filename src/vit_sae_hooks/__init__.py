"""vit_sae_hooks: hooked vision transformers and sparse autoencoders for mechanistic interpretability."""

__version__ = "0.1.0"
