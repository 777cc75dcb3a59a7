"""Activations written to disk once (sharded safetensors with a small JSON index) and trained on many times.

Layout of a cache folder::

    cache.json                       what was cached: hooks (and their widths), token set, model, parts
    part-000/index.json              finished files, tokens so far, the source stream's position, complete?
    part-000/000000.safetensors      one tensor "activations" [tokens, d_in], already shuffled
    ...

Each part is written from one data shard (one per process under torchrun). Files and indexes are replaced
atomically, so an interrupted write resumes after the last finished file with the same tokens. Training
reads whole files in sequence (one contiguous read each) and shuffles each file's rows again per epoch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from vit_sae_hooks.errors import DataError
from vit_sae_hooks.files import read_json
from vit_sae_hooks.training.activations import ActivationData, BlockStream, hook_columns, seeded_generator, shuffled
from vit_sae_hooks.training.checkpoint import replace_file

logger = logging.getLogger(__name__)

CACHE_FILE = "cache.json"
INDEX_FILE = "index.json"
TENSOR_NAME = "activations"


def _part_folder(folder: Path, part: int) -> Path:
    return folder / f"part-{part:03d}"


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path, DataError, fix="delete the cache folder and write it again.")


def _write_json(path: Path, values: dict[str, Any]) -> None:
    replace_file(path, (json.dumps(values, indent=1) + "\n").encode())


def write_activation_cache(
    data: ActivationData, folder: str | os.PathLike, tokens: int, parts: int = 1, write_parts: list[int] | None = None,
    seed: int = 0, file_tokens: int = 65536, dtype: torch.dtype | None = None, progress: bool = True,
) -> Path:
    """Write ``tokens`` activations of ``data`` to ``folder`` in ``parts`` parts (resuming an unfinished write).

    ``write_parts`` limits this call to some parts (a process writes its own); default all. ``dtype``
    (e.g. ``torch.bfloat16``) halves the size on disk; default: as computed.

    Example:
        >>> write_activation_cache(ImageActivations(model, "blocks.9.hook_resid_post", images), "cache/l9", 2_000_000)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    columns = hook_columns(data)
    description = {
        "d_in": data.d_in, "hook_name": data.hook_name, "token_set": data.token_set, "model_name": data.model_name,
        "parts": parts, "tokens": tokens, "seed": seed,
    }
    if len(columns) > 1:
        description["hook_names"] = list(columns)
        description["widths"] = [part.stop - part.start for part in columns.values()]
    existing = folder / CACHE_FILE
    if existing.is_file():
        recorded = _read_json(existing)
        if recorded != description:
            raise DataError(
                f"{folder} already caches {recorded}, not {description}; use another folder or delete this one."
            )
    else:
        _write_json(existing, description)
    per_part = -(-tokens // parts)
    for part in write_parts if write_parts is not None else range(parts):
        _write_part(data, _part_folder(folder, part), part, parts, per_part, seed, file_tokens, dtype, progress)
    return folder


def _write_part(
    data: ActivationData, folder: Path, part: int, parts: int, tokens: int, seed: int, file_tokens: int,
    dtype: torch.dtype | None, progress: bool,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / INDEX_FILE
    index = _read_json(index_path) if index_path.is_file() else {"files": [], "tokens": 0, "stream": None, "complete": False}
    if index["complete"]:
        return
    stream = data.stream(part, parts, seed)
    if index["stream"] is not None:
        stream.load_state_dict(index["stream"])
    bar = tqdm(total=tokens, initial=index["tokens"], disable=not progress, unit="tok", desc=f"cache part {part}")
    while index["tokens"] < tokens:
        batch = stream.next_batch(min(file_tokens, tokens - index["tokens"])).detach().cpu().contiguous()
        if dtype is not None:
            batch = batch.to(dtype)
        name = f"{len(index['files']):06d}.safetensors"
        temporary = folder / f".tmp-{name}"
        save_file({TENSOR_NAME: batch}, temporary)
        os.replace(temporary, folder / name)
        index["files"].append({"name": name, "tokens": len(batch)})
        index["tokens"] += len(batch)
        index["stream"] = stream.state_dict()
        _write_json(index_path, index)
        bar.update(len(batch))
    bar.close()
    index["complete"] = True
    _write_json(index_path, index)


class CachedActivations:
    """Training data read from a folder written by :func:`write_activation_cache`.

    Shard ``s`` of ``n`` reads files ``s, s + n, ...`` of the whole cache, in a fresh order each epoch.

    Example:
        >>> sae = train_sae(CachedActivations("cache/l9"), TrainConfig(k=32))
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if not (self.folder / CACHE_FILE).is_file():
            raise DataError(
                f"{self.folder} is not an activation cache (no {CACHE_FILE}); write one with write_activation_cache "
                "or `vit-sae train --cache-activations DIR`."
            )
        description = _read_json(self.folder / CACHE_FILE)
        self.d_in: int = description["d_in"]
        self.hook_name: str | None = description["hook_name"]
        self.token_set: str = description["token_set"]
        self.model_name: str | None = description["model_name"]
        self.hook_names: tuple[str | None, ...] = tuple(description.get("hook_names") or (self.hook_name,))
        self.widths: tuple[int, ...] = tuple(description.get("widths") or (self.d_in,))
        self.files: list[Path] = []
        self.tokens = 0
        for part in range(description["parts"]):
            part_folder = _part_folder(self.folder, part)
            index_path = part_folder / INDEX_FILE
            index = _read_json(index_path) if index_path.is_file() else {"files": [], "complete": False}
            if not index["complete"]:
                raise DataError(
                    f"activation cache {self.folder} is unfinished: part {part} has {len(index['files'])} files and is "
                    "not marked complete; run the same cache command again to finish it."
                )
            self.files += [part_folder / entry["name"] for entry in index["files"]]
            self.tokens += index["tokens"]

    def stream(self, shard: int, n_shards: int, seed: int) -> BlockStream:
        """The batches of shard ``shard`` of ``n_shards``: whole files in a seeded order, rows shuffled.

        Example:
            >>> batch = CachedActivations("cache/l9").stream(0, 1, seed=0).next_batch(4096)
        """
        files = self.files[shard::n_shards]
        if not files:
            raise DataError(
                f"activation cache {self.folder} has {len(self.files)} files, too few for data shard {shard} of "
                f"{n_shards}; write it with smaller files (file_tokens) or train with fewer shards."
            )

        def block(index: int) -> torch.Tensor:
            epoch, position = divmod(index, len(files))
            order = torch.randperm(len(files), generator=seeded_generator(seed, shard, epoch, -1))
            return shuffled(load_file(files[int(order[position])])[TENSOR_NAME], seed, shard, index)

        return BlockStream(block)
