"""The SAE architectures this library implements, by the name checkpoints and configs use for them.

Each architecture is one class in ``sae/architectures/`` that registers itself with :func:`register`;
``SAEConfig`` and the checkpoint readers ask this registry, never a list of names of their own.

Example:
    >>> architecture_class("topk").__name__
    'TopKSAE'
"""

from __future__ import annotations

from typing import Any, TypeVar

from vit_sae_hooks.errors import ConfigError

ArchitectureClass = TypeVar("ArchitectureClass", bound=type)

_ARCHITECTURES: dict[str, Any] = {}


def register(cls: ArchitectureClass) -> ArchitectureClass:
    """Class decorator: make ``cls`` the implementation of the architecture named ``cls.architecture``.

    Example:
        >>> @register
        ... class MySAE(SAE):
        ...     architecture = "mine"
    """
    name = cls.architecture
    if name in _ARCHITECTURES and _ARCHITECTURES[name] is not cls:
        raise ConfigError(f"architecture {name!r} is already implemented by {_ARCHITECTURES[name].__name__}")
    _ARCHITECTURES[name] = cls
    return cls


def architecture_names() -> tuple[str, ...]:
    """The registered architecture names, in registration order, e.g. ``("standard", "topk", "jumprelu")``."""
    return tuple(_ARCHITECTURES)


def all_architecture_classes() -> tuple[Any, ...]:
    """Every registered architecture class, in registration order."""
    return tuple(_ARCHITECTURES.values())


def architecture_class(name: str) -> Any:
    """The class implementing the architecture ``name``; a :class:`ConfigError` listing the known ones otherwise.

    Example:
        >>> architecture_class("jumprelu").architecture
        'jumprelu'
    """
    if name not in _ARCHITECTURES:
        raise ConfigError(
            f"architecture {name!r} is not supported; use one of {architecture_names()} "
            "(gated and other architectures are not implemented)."
        )
    return _ARCHITECTURES[name]
