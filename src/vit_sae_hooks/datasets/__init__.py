"""Deprecated: the generated shapes dataset moved to :mod:`vit_sae_hooks.data.shapes`.

Example:
    >>> from vit_sae_hooks.data import shapes  # instead of vit_sae_hooks.datasets
"""

import warnings

from vit_sae_hooks.data import shapes

warnings.warn(
    "vit_sae_hooks.datasets is deprecated; import the shapes dataset from vit_sae_hooks.data "
    "(from vit_sae_hooks.data import shapes)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["shapes"]
