"""Find which published layout a path holds and read it into this library's conventions.

One module per layout: :mod:`.saelens` (also what :meth:`SAE.save` writes), :mod:`.prisma`,
:mod:`.sparsify`, :mod:`.clipscope`, :mod:`.saev`. Detection looks only at file names and, for ``.pt`` files, at the
keys of the safely unpickled dict.
"""

from __future__ import annotations

import re
from pathlib import Path

from vit_sae_hooks.errors import CheckpointFormatError, ResolutionError
from vit_sae_hooks.sae.formats import clipscope, prisma, saelens, saev, sparsify
from vit_sae_hooks.sae.formats._io import LoadedCheckpoint
from vit_sae_hooks.sae.safe_pickle import load_torch_checkpoint

__all__ = ["HUB_FILE_PATTERNS", "LoadedCheckpoint", "read_checkpoint"]

# Every file any supported layout needs, relative to the checkpoint folder (hub downloads fetch only these).
HUB_FILE_PATTERNS = ["cfg.json", "config.json", "*.safetensors", "*.pt"]

_TORCH_SUFFIXES = (".pt", ".pth")
_LAYOUTS = (
    "SAELens/vit_sae_hooks (cfg.json + sae_weights.safetensors), sparsify (cfg.json + sae.safetensors), "
    "Prisma (weights.pt or n_images_*.pt, with config.json), clipscope ({tokens_seen}.pt), saev (sae.pt: a JSON "
    "header line, then the state dict)"
)


def read_checkpoint(path: Path) -> LoadedCheckpoint:
    """The SAE config and weights stored at ``path`` (a checkpoint folder or its weights file), any layout.

    Example:
        >>> checkpoint = read_checkpoint(Path("tests/fixtures/prisma_topk_none"))
    """
    path = Path(path)
    if not path.exists():
        raise ResolutionError(f"{path} does not exist; pass a checkpoint folder or its weights file.")
    if path.is_file():
        return _read_file(path)
    return _read_folder(path)


def _read_file(path: Path) -> LoadedCheckpoint:
    if path.suffix in _TORCH_SUFFIXES:
        return _read_torch_file(path)
    if path.suffix == ".safetensors" or path.name in (saelens.CONFIG_FILE, prisma.CONFIG_FILE):
        return _read_folder(path.parent)
    raise CheckpointFormatError(f"{path} is not a file of any supported SAE layout: {_LAYOUTS}.")


def _read_folder(folder: Path) -> LoadedCheckpoint:
    if saelens.matches(folder):
        return saelens.read(folder)
    if sparsify.matches(folder):
        return sparsify.read(folder)
    torch_files = sorted(p for p in folder.iterdir() if p.suffix in _TORCH_SUFFIXES and p.is_file())
    if torch_files:
        return _read_torch_file(_final_checkpoint(folder, torch_files))
    candidates = sorted(p for p in folder.iterdir() if p.is_dir() and _holds_checkpoint(p))
    if len(candidates) == 1:
        return _read_folder(candidates[0])
    if candidates:
        names = ", ".join(repr(p.name) for p in candidates)
        raise CheckpointFormatError(
            f"{folder} holds several SAEs ({names}); pass the folder of the one you want, e.g. {candidates[0]}."
        )
    raise CheckpointFormatError(f"no SAE checkpoint found in {folder}; supported layouts: {_LAYOUTS}.")


def _holds_checkpoint(folder: Path) -> bool:
    return saelens.matches(folder) or sparsify.matches(folder) or any(
        p.suffix in _TORCH_SUFFIXES for p in folder.iterdir()
    )


def _final_checkpoint(folder: Path, torch_files: list[Path]) -> Path:
    # Prisma saves weights.pt or n_images_<count>.pt and clipscope <tokens_seen>.pt; the largest count is the last.
    if len(torch_files) == 1:
        return torch_files[0]
    named = [p for p in torch_files if p.name == "weights.pt"]
    if named:
        return named[0]
    counted = [(int(m.group(1)), p) for p in torch_files if (m := re.search(r"(\d+)$", p.stem))]
    if len(counted) == len(torch_files):
        return max(counted)[1]
    names = ", ".join(p.name for p in torch_files)
    raise CheckpointFormatError(f"{folder} holds several .pt files ({names}); pass the path of the one to load.")


def _read_torch_file(path: Path) -> LoadedCheckpoint:
    if saev.matches(path):
        return saev.read(path)
    checkpoint = load_torch_checkpoint(path)
    if clipscope.matches(checkpoint):
        return clipscope.read(path, checkpoint)
    if prisma.matches(checkpoint):
        return prisma.read(path, checkpoint)
    found = sorted(map(str, checkpoint))[:20] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise CheckpointFormatError(
        f"{path} is a torch checkpoint of no supported SAE layout (found {found}); expected Prisma's "
        "{'cfg', 'state_dict'} or clipscope's {'k', 'n_features', 'd_in', 'model_state_dict'}."
    )
