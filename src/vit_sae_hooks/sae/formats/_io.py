"""File reading and state-dict checks shared by every checkpoint format, each failure naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file
from torch import Tensor

from vit_sae_hooks.errors import CheckpointFormatError, ConfigError
from vit_sae_hooks.sae.config import SAEConfig


class LoadedCheckpoint(NamedTuple):
    """A checkpoint translated to this library's conventions: the config and ``W_enc [d_in, d_sae]``-style tensors."""

    config: SAEConfig
    state_dict: dict[str, Tensor]


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a missing, unparsable or non-object file is a :class:`CheckpointFormatError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise CheckpointFormatError(f"{path} is missing; the checkpoint needs this config file next to its weights.") from error
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointFormatError(f"{path} could not be read as UTF-8 text ({error}); download it again.") from error
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointFormatError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
            "the file is probably truncated or corrupt. Download it again."
        ) from error
    if not isinstance(values, dict):
        raise CheckpointFormatError(f"{path} holds a JSON {type(values).__name__}, not the expected object of config keys.")
    return values


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors in the safetensors file ``path``, on the CPU."""
    if not path.is_file():
        raise CheckpointFormatError(f"{path} is missing; the checkpoint needs this weights file next to its config.")
    try:
        return load_file(path, device="cpu")
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged headers and data
        raise CheckpointFormatError(
            f"{path} is not a readable safetensors file ({type(error).__name__}: {error}); "
            "the file is probably truncated or corrupt. Download it again."
        ) from error


def require(values: dict[str, Any], key: str, path: Path) -> Any:
    """``values[key]``, or a :class:`CheckpointFormatError` saying that ``path`` lacks ``key``."""
    if key not in values:
        raise CheckpointFormatError(f"{path} has no {key!r} entry; found {sorted(values)[:20]}.")
    return values[key]


def build_config(path: Path, **fields: Any) -> SAEConfig:
    """An :class:`SAEConfig` from values read out of ``path``, with invalid values reported against the file."""
    try:
        return SAEConfig(**fields)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def expected_shapes(config: SAEConfig) -> dict[str, tuple[int, ...]]:
    """The parameter names and shapes an SAE with ``config`` has."""
    shapes = {
        "W_enc": (config.d_in, config.d_sae),
        "b_enc": (config.d_sae,),
        "W_dec": (config.d_sae, config.d_in),
        "b_dec": (config.d_in,),
    }
    if config.architecture == "jumprelu":
        shapes["threshold"] = (config.d_sae,)
    return shapes


def checked_checkpoint(config: SAEConfig, tensors: dict[str, Any], source: Path | str) -> LoadedCheckpoint:
    """``config`` with ``tensors`` cast to its dtype, after checking names and shapes against it.

    Missing, unexpected and wrongly shaped parameters are all reported at once, so the error says
    everything that is wrong with the file (and nothing is loaded).
    """
    shapes = expected_shapes(config)
    problems = []
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        problems.append(f"missing parameters {missing}")
    unexpected = sorted(set(tensors) - set(shapes))
    if unexpected:
        problems.append(f"unexpected parameters {unexpected} (not part of a {config.architecture} SAE)")
    for name, shape in shapes.items():
        tensor = tensors.get(name)
        if tensor is None:
            continue
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            problems.append(f"{name} is {type(tensor).__name__} {getattr(tensor, 'dtype', '')}, not a float tensor")
        elif tuple(tensor.shape) != shape:
            problems.append(
                f"{name} has shape {list(tensor.shape)} but the config (d_in={config.d_in}, "
                f"d_sae={config.d_sae}) needs {list(shape)}"
            )
    if problems:
        raise CheckpointFormatError(
            f"{source} does not hold a valid SAE: " + "; ".join(problems) + ". "
            "Check that the config file belongs to these weights."
        )
    dtype = config.torch_dtype
    return LoadedCheckpoint(config, {name: tensors[name].to(dtype).contiguous() for name in shapes})


def tensor_entry(values: dict[str, Any], key: str, path: Path) -> Tensor:
    """``values[key]`` when it is a tensor; otherwise a :class:`CheckpointFormatError` naming ``path``."""
    value = require(values, key, path)
    if not isinstance(value, torch.Tensor):
        raise CheckpointFormatError(f"{path}: {key!r} is a {type(value).__name__}, expected a tensor.")
    return value


def integer_entry(values: dict[str, Any], key: str, path: Path) -> int:
    """``values[key]`` when it is an integer (not a bool); otherwise a :class:`CheckpointFormatError`."""
    value = require(values, key, path)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointFormatError(f"{path}: {key!r} is {value!r}, expected an integer.")
    return value
