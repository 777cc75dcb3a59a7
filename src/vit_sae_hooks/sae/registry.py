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
# The mixin that turns an architecture into a transcoder (sae/architectures/transcoder.py), and the classes made.
_TRANSCODER: list[Any] = []
_TRANSCODER_CLASSES: dict[Any, Any] = {}


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
            "(set d_out for a transcoder of any of them)."
        )
    return _ARCHITECTURES[name]


def register_transcoder(mixin: ArchitectureClass) -> ArchitectureClass:
    """Class decorator: ``mixin`` turns any registered architecture into a transcoder (see :func:`sae_class`)."""
    if _TRANSCODER and _TRANSCODER[0] is not mixin:
        raise ConfigError(f"a transcoder mixin is already registered: {_TRANSCODER[0].__name__}")
    _TRANSCODER[:] = [mixin]
    return mixin


def sae_class(cfg: Any) -> Any:
    """The class that computes what ``cfg`` describes: its architecture's class, made a transcoder when
    ``cfg.d_out`` is set (e.g. ``TopKTranscoder``: the TopK activation, reading one hook and predicting another).

    Example:
        >>> sae_class(SAEConfig(d_in=8, d_sae=32, architecture="topk", k=4, d_out=8, apply_b_dec_to_input=False)).__name__
        'TopKTranscoder'
    """
    own = architecture_class(cfg.architecture)
    if cfg.d_out is None:
        return own
    if own not in _TRANSCODER_CLASSES:
        mixin = _TRANSCODER[0]
        name = own.__name__.removesuffix("SAE") + "Transcoder"
        doc = f"A transcoder with the {own.architecture!r} activation (:class:`{own.__name__}` + :class:`{mixin.__name__}`)."
        _TRANSCODER_CLASSES[own] = type(name, (mixin, own), {"__module__": mixin.__module__, "__doc__": doc})
    return _TRANSCODER_CLASSES[own]
