"""Library exceptions: every message names the offending value and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VitSaeHooksError(Exception):
    """Base class of every error raised on purpose by vit_sae_hooks."""


class HookNameError(VitSaeHooksError, ValueError):
    """A hook name that the model (or an attached SAE) does not have."""


class ConfigError(VitSaeHooksError, ValueError):
    """A configuration value that is missing, inconsistent or unsupported."""


class InputShapeError(VitSaeHooksError, ValueError):
    """A tensor whose shape, rank or dtype does not fit what the model expects."""


class CheckpointFormatError(VitSaeHooksError, ValueError):
    """A checkpoint whose files or keys do not match any supported layout."""


class ResolutionError(VitSaeHooksError, FileNotFoundError):
    """A name that is neither a local path nor a hub id available online or in the cache."""


class DataError(VitSaeHooksError, ValueError):
    """An image dataset, image file or label set that cannot be used as given."""


def closest_names(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The ``n`` candidates most similar to ``name``, best first."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)


def unknown_hook_message(name: str, valid_names: Iterable[str], n_layers: int | None = None) -> str:
    """A readable explanation of why ``name`` is not a hook, with the closest valid names."""
    valid = list(valid_names)
    message = f"hook {name!r} does not exist"
    if n_layers is not None:
        message += f"; this model has blocks 0-{n_layers - 1}"
    suggestions = closest_names(name, valid)
    if suggestions:
        message += ". Did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
    else:
        message += ". List the valid names with `model.hook_dict.keys()`."
    return message
