"""The published vision SAEs (registry short names, hub locations, metadata and metrics): the public face of
:mod:`vit_sae_hooks.sae.pretrained`, where the registry lives.

Example:
    >>> from vit_sae_hooks import pretrained
    >>> pretrained.find(layer=9, hook="resid_post", tokens="all")[0].name
    'prisma/clip-b32/all-patches/resid_post/9'
"""

from vit_sae_hooks.sae.pretrained import (
    CLIPSCOPE_BASE_MODEL,
    CLIPSCOPE_REPO,
    PRISMA_BASE_MODEL,
    REGISTRY,
    PretrainedSAE,
    all_entries,
    find,
    get,
    lookup,
    resolve_location,
)

__all__ = [
    "CLIPSCOPE_BASE_MODEL",
    "CLIPSCOPE_REPO",
    "PRISMA_BASE_MODEL",
    "REGISTRY",
    "PretrainedSAE",
    "all_entries",
    "find",
    "get",
    "lookup",
    "resolve_location",
]
