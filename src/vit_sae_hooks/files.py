"""Reading the JSON files checkpoints, caches and preprocessing configs keep, with errors that name the file.

Example:
    >>> values = read_json(Path("my_sae/cfg.json"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vit_sae_hooks.errors import CheckpointFormatError, VitSaeHooksError


def read_json(
    path: Path,
    error: type[VitSaeHooksError] = CheckpointFormatError,
    fix: str = "the file is probably truncated or corrupt; download it again.",
) -> dict[str, Any]:
    """The JSON object in ``path``; a missing, undecodable, unparsable or non-object file raises ``error``.

    ``fix`` ends the message of a damaged file (e.g. "delete the cache folder and write it again.").

    Example:
        >>> read_json(Path("my_sae/cfg.json"))["d_sae"]
        256
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as missing:
        raise error(f"{path} is missing; it must sit next to the files that need it.") from missing
    except (OSError, UnicodeDecodeError) as unreadable:
        raise error(f"{path} could not be read as UTF-8 text ({unreadable}); {fix}") from unreadable
    try:
        values = json.loads(text)
    except json.JSONDecodeError as invalid:
        raise error(
            f"{path} is not valid JSON (line {invalid.lineno}, column {invalid.colno}: {invalid.msg}); {fix}"
        ) from invalid
    except RecursionError as nested:
        raise error(f"{path} nests JSON too deeply to be a config; {fix}") from nested
    if not isinstance(values, dict):
        raise error(f"{path} holds a JSON {type(values).__name__}, not the expected object of keys; {fix}")
    return values
