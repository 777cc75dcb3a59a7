"""Value checks and config-dict reading shared by every config of the package, each failure naming the value.

Example:
    >>> positive_int("batch_size", 4096)
    4096
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import torch

from vit_sae_hooks.errors import ConfigError, VitSaeHooksError

ConfigClass = TypeVar("ConfigClass")


def described_shape(value: Any) -> tuple[int, ...] | str:
    """A value's shape if it is a tensor, else its type's name: what error messages show of a wrong input.

    Example:
        >>> described_shape(torch.zeros(2, 3)), described_shape(None)
        ((2, 3), 'NoneType')
    """
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python integer (``bool`` is not).

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: Any, fix: str = "") -> int:
    """``value`` when it is an integer >= 1; otherwise a :class:`ConfigError` naming ``name`` (and ``fix``).

    Example:
        >>> positive_int("k", 32)
        32
    """
    if not is_int(value) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}." + (f" {fix}" if fix else ""))
    return value


def non_negative_int(name: str, value: Any) -> int:
    """``value`` when it is an integer >= 0; otherwise a :class:`ConfigError` naming ``name``.

    Example:
        >>> non_negative_int("seed", 0)
        0
    """
    if not is_int(value) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}.")
    return value


def finite_number(name: str, value: Any, minimum: float | None = None, strictly: bool = False) -> float:
    """``value`` as a float when it is a finite number (``>= minimum``, or ``>`` it with ``strictly``).

    Example:
        >>> finite_number("lr", 1e-3, minimum=0, strictly=True)
        0.001
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}.")
    if minimum is not None and (value <= minimum if strictly else value < minimum):
        bound = f"greater than {minimum}" if strictly else f"at least {minimum}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}.")
    return float(value)


def config_from_dict(
    cls: type[ConfigClass], values: Mapping[str, Any], required: Iterable[str] = (), source: object = None
) -> ConfigClass:
    """The dataclass ``cls`` built from ``values``; unknown or missing keys and bad values name ``source``.

    Unknown keys are an error so that typos do not pass silently. ``source`` (a file, say) prefixes every
    message, so an error in a config read from disk names that file.

    Example:
        >>> config_from_dict(SAEConfig, {"d_in": 8, "d_sae": 16}, required=("d_in", "d_sae")).d_sae
        16
    """
    where = f"{source}: " if source is not None else ""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}a {cls.__name__} is a JSON object of fields, got {type(values).__name__}.")
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(values) - known)
    if unknown:
        raise ConfigError(f"{where}unknown {cls.__name__} fields {unknown}; valid fields are {sorted(known)}.")
    missing = sorted(name for name in required if name not in values)
    if missing:
        raise ConfigError(f"{where}{cls.__name__} needs the fields {missing}.")
    try:
        return cls(**values)
    except VitSaeHooksError as error:
        if source is None:
            raise
        raise type(error)(f"{where}{error}") from error
    except (TypeError, ValueError, AttributeError) as error:
        # A field of the wrong JSON type (a string where a number belongs) fails inside __post_init__.
        raise ConfigError(f"{where}a {cls.__name__} field has a value of the wrong type ({error}).") from error
