"""Read torch ``.pt`` checkpoints without executing pickled code.

Prisma pickles its ``VisionModelSAERunnerConfig`` object inside ``weights.pt``. Unpickling that class for
real would import vit_prisma and run whatever the file names, so instead the file goes through torch's
``weights_only`` unpickler (tensors, plain containers, nothing callable) with one extra allowed global: a
stand-in class registered under the Prisma config's import path, which only accepts a dict of plain values.
Any other class in the file is refused before it is looked up.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO

import torch

from vit_sae_hooks.errors import CheckpointFormatError

PRISMA_CONFIG_CLASS = "vit_prisma.sae.config.VisionModelSAERunnerConfig"

_PLAIN_TYPES = (type(None), bool, int, float, str)


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN_TYPES):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return False


class PrismaConfigStandIn:
    """The fields of a pickled Prisma ``VisionModelSAERunnerConfig``, as a plain dict in ``.fields``.

    Example:
        >>> PrismaConfigStandIn().fields
        {}
    """

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        # The unpickler calls this with whatever the file holds; only a flat record of plain values is a config.
        if not isinstance(state, dict) or not _is_plain(state):
            raise pickle.UnpicklingError(
                f"the pickled {PRISMA_CONFIG_CLASS} holds {type(state).__name__} state with non-plain values; "
                "a Prisma config is a dict of strings, numbers, booleans and lists"
            )
        self.fields = dict(state)


def load_torch_checkpoint(data: Path | BinaryIO, source: object = None) -> Any:
    """The object saved in ``data`` (a file, or a stream of its bytes) by ``torch.save``, loaded with nothing
    but tensors and plain data; ``source`` names it in errors (default: ``data``).

    Raises :class:`CheckpointFormatError` naming the file for a truncated or corrupt archive and for any
    pickled class other than tensors, containers and the Prisma config stand-in.

    Example:
        >>> checkpoint = load_torch_checkpoint(Path("prisma_topk_none/weights.pt"))
    """
    allowed = [(PrismaConfigStandIn, PRISMA_CONFIG_CLASS)]
    path = data if source is None else source  # the name every message below uses
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _unpickler_reason(error)
        if _REFUSED_OBJECT.search(reason):
            raise CheckpointFormatError(
                f"{path} contains pickled objects that are not tensors, plain containers or a Prisma SAE config, "
                f"so it was not loaded (nothing in it was executed): {reason}. "
                "Re-save the checkpoint as a state dict of tensors, or as safetensors."
            ) from error
        raise CheckpointFormatError(
            f"{path} is not a readable torch checkpoint ({reason}); the file is probably truncated or corrupt. "
            "Download it again."
        ) from error
    except Exception as error:
        raise CheckpointFormatError(
            f"{path} is not a readable torch checkpoint ({type(error).__name__}: {_first_line(error)}); "
            "the file is probably truncated or corrupt. Download it again."
        ) from error


# How torch's weights_only unpickler words a refused global or class (as opposed to malformed bytes).
_REFUSED_OBJECT = re.compile(r"global|class|Can only build|non-plain|allowlist", re.IGNORECASE)


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    # torch's message wraps the reason in advice to retry with weights_only=False or to allowlist the global,
    # which is exactly what must not happen; keep only the reason.
    text = str(error)
    match = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\s*Please (?:use|file)|\n\s*\n|$)", text, re.DOTALL)
    if match and match.group(1).strip():
        return " ".join(match.group(1).split()).rstrip(".")
    boilerplate = ("Weights only load failed", "Check the documentation")
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip() and not p.strip().startswith(boilerplate)]
    return " ".join(paragraphs[0].split()).rstrip(".") if paragraphs else type(error).__name__


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
