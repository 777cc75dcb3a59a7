"""Built-in datasets that need no download (reading image folders from disk lives in ``vit_sae_hooks.data``)."""

from vit_sae_hooks.datasets import shapes

__all__ = ["shapes"]
