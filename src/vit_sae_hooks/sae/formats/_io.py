"""File reading and state-dict checks shared by every checkpoint format, each failure naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file
from torch import Tensor

from vit_sae_hooks.errors import CheckpointFormatError
from vit_sae_hooks.files import read_json
from vit_sae_hooks.sae.config import SAEConfig
from vit_sae_hooks.sae.registry import sae_class

__all__ = ["LoadedCheckpoint", "build_config", "checked_checkpoint", "has_files", "integer_entry", "read_json",
           "read_safetensors", "rename_magnitude_bias", "require", "tensor_entry"]


class LoadedCheckpoint(NamedTuple):
    """A checkpoint translated to this library's conventions: the config and ``W_enc [d_in, d_sae]``-style tensors."""

    config: SAEConfig
    state_dict: dict[str, Tensor]


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors in the safetensors file ``path``, on the CPU."""
    if not path.is_file():
        raise CheckpointFormatError(f"{path} is missing; the checkpoint needs this weights file next to its config.")
    try:
        return load_file(path, device="cpu")
    except Exception as error:
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
    return SAEConfig.from_dict(fields, source=path)


def has_files(folder: Path, *names: str) -> bool:
    """Whether every one of ``names`` is a file in ``folder`` (how a layout recognises its checkpoints).

    Example:
        >>> has_files(Path("my_sae"), "cfg.json", "sae_weights.safetensors")
        True
    """
    return all((folder / name).is_file() for name in names)


def checked_checkpoint(config: SAEConfig, tensors: dict[str, Any], source: Path | str) -> LoadedCheckpoint:
    """``config`` with ``tensors`` cast to its dtype, after checking names and shapes against it.

    Missing, unexpected and wrongly shaped parameters are all reported at once, so the error says
    everything that is wrong with the file (and nothing is loaded).
    """
    shapes = sae_class(config).parameter_shapes(config)
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
        elif not bool(torch.isfinite(tensor).all()):
            problems.append(f"{name} holds NaN or infinite values")
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


def rename_magnitude_bias(tensors: dict[str, Tensor], path: Path | str) -> dict[str, Tensor]:
    """A peer's gated tensors with ``b_mag`` as ``b_enc`` (Prisma's own, unused ``b_enc`` is dropped).

    Example:
        >>> rename_magnitude_bias({"b_mag": b, "W_enc": W}, "cfg.json").keys()
        dict_keys(['W_enc', 'b_enc'])
    """
    if "b_mag" not in tensors:
        raise CheckpointFormatError(f"{path}: a gated SAE needs 'b_mag' (the magnitude bias); found {sorted(tensors)}.")
    tensors = {name: tensor for name, tensor in tensors.items() if name != "b_enc"}
    tensors["b_enc"] = tensors.pop("b_mag")
    return tensors
