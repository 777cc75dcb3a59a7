"""Training checkpoints in the SAELens layout, written so that a crash never leaves a damaged "latest" one.

``OUT/checkpoints/step_00000500/`` holds ``cfg.json`` + ``sae_weights.safetensors`` (readable by
:meth:`SAE.load` and SAELens) and ``trainer_state.pt`` (optimiser, data position, dead-latent counters).
Each checkpoint is written into a temporary folder, flushed to disk and renamed into place in one step;
only then does ``OUT/checkpoints/latest`` (replaced the same way) name it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from vit_sae_hooks.errors import CheckpointFormatError
from vit_sae_hooks.sae import SAE, SAEConfig
from vit_sae_hooks.sae.formats import saelens

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.pt"
_STEP_PREFIX = "step_"
_TEMP_PREFIX = ".tmp-"


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers see old or new, never half.

    Example:
        >>> replace_file(Path("out/checkpoints/latest"), b"step_00000500")
    """
    temporary = path.with_name(f"{_TEMP_PREFIX}{path.name}-{os.getpid()}")
    temporary.write_bytes(data)
    _fsync(temporary)
    os.replace(temporary, path)


def save_sae_atomically(sae: SAE, folder: Path) -> Path:
    """Write ``sae`` to ``folder`` in the SAELens layout, each file replaced atomically (weights first).

    Example:
        >>> save_sae_atomically(sae, Path("runs/l9"))
    """
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f"{_TEMP_PREFIX}sae-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    sae.save(staging, allow_lossy=True)  # what SAELens cannot express is still read back exactly here
    for name in (saelens.WEIGHTS_FILE, saelens.CONFIG_FILE):
        _fsync(staging / name)
        os.replace(staging / name, folder / name)
    shutil.rmtree(staging, ignore_errors=True)
    return folder


def write_checkpoint(out: Path, step: int, sae: SAE, state: dict[str, Any], keep: int) -> Path:
    """Write the checkpoint of ``step`` under ``out/checkpoints``, point ``latest`` at it, keep the newest ``keep``.

    Example:
        >>> write_checkpoint(Path("runs/l9"), 500, sae, {"step": 500, "optimizer": optimizer.state_dict()}, keep=2)
    """
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"{_STEP_PREFIX}{step:08d}"
    staging = root / f"{_TEMP_PREFIX}{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    sae.save(staging, allow_lossy=True)  # what SAELens cannot express is still read back exactly here
    # The SAELens folder may hold a transformed form (a scaling factor folded in); resuming needs the exact one.
    exact = {"sae_config": json.dumps(sae.cfg.to_dict()), "sae_state": {k: v.detach().cpu() for k, v in sae.state_dict().items()}}
    torch.save({**state, **exact}, staging / STATE_FILE)
    for file in staging.iterdir():
        _fsync(file)
    final = root / name
    if final.exists():
        # Left by a run that crashed after this step's rename but before `latest` moved on; same step, same data.
        shutil.rmtree(final)
    os.rename(staging, final)
    replace_file(root / LATEST, name.encode())
    _fsync(root)
    _prune(root, keep, current=name)
    return final


def _prune(root: Path, keep: int, current: str) -> None:
    steps = sorted(path for path in root.iterdir() if path.is_dir() and path.name.startswith(_STEP_PREFIX))
    for old in steps[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(f"{_TEMP_PREFIX}*"):
        if leftover.name.endswith(f"-{os.getpid()}"):
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (saelens.CONFIG_FILE, saelens.WEIGHTS_FILE, STATE_FILE))


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: ``path`` itself, or the latest one under ``path`` (a run or checkpoints folder).

    Returns None when ``path`` holds no checkpoint yet. Temporary folders of interrupted writes are ignored.

    Example:
        >>> find_checkpoint("runs/l9")
        PosixPath('runs/l9/checkpoints/step_00000500')
    """
    path = Path(path)
    if _is_complete(path):
        return path
    root = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    if not root.is_dir():
        return None
    latest = root / LATEST
    if latest.is_file():
        named = root / latest.read_text(encoding="utf-8").strip()
        if _is_complete(named):
            return named
        logger.warning("%s names %s, which is missing or incomplete; using the newest complete checkpoint", latest, named)
    steps = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_STEP_PREFIX) and _is_complete(p))
    return steps[-1] if steps else None


def read_checkpoint(folder: Path, device: torch.device | str | None = None) -> tuple[SAE, dict[str, Any]]:
    """The SAE and trainer state stored in the checkpoint ``folder``.

    Example:
        >>> sae, state = read_checkpoint(find_checkpoint("runs/l9"))
    """
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointFormatError(
            f"{folder / STATE_FILE} is not a readable trainer state ({type(error).__name__}: {error}); "
            "resume from an earlier checkpoint or start a fresh run."
        ) from error
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointFormatError(f"{folder / STATE_FILE} has no training step; it was not written by vit-sae train.")
    if "sae_state" in state:
        config = SAEConfig.from_dict(json.loads(state["sae_config"]), source=folder / STATE_FILE)
        sae = SAE.from_state_dict(config, state["sae_state"], device=device)
    else:
        sae = SAE.load(folder, device=device)
    return sae, state
