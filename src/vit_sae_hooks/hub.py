"""Resolve a local path or a Hugging Face hub id to local files, online or from the cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vit_sae_hooks.errors import ResolutionError

logger = logging.getLogger(__name__)

# Names under this prefix are checkpoints shipped inside the package (the offline demo's model and SAE).
BUILTIN_PREFIX = "vit-sae-hooks/"
ASSETS = Path(__file__).parent / "assets"


def builtin_names() -> list[str]:
    """The built-in checkpoint names, e.g. ``vit-sae-hooks/shapes-vit``.

    Example:
        >>> builtin_names()
        ['vit-sae-hooks/shapes-vit', 'vit-sae-hooks/shapes-vit/resid_post/2']
    """
    folders = {config.parent for config in ASSETS.rglob("*.json")}
    return sorted(BUILTIN_PREFIX + str(folder.relative_to(ASSETS)) for folder in folders)


def builtin_folder(name: str | os.PathLike) -> Path | None:
    """The folder of a checkpoint shipped in the package (``vit-sae-hooks/...``), or None for other names.

    Example:
        >>> builtin_folder("vit-sae-hooks/shapes-vit").name
        'shapes-vit'
    """
    text = str(name)
    if not text.startswith(BUILTIN_PREFIX):
        return None
    folder = ASSETS / text[len(BUILTIN_PREFIX) :].strip("/")
    return folder if folder.is_dir() else None


def split_hub_id(name: str) -> tuple[str, str | None]:
    """Split ``owner/repo/sub/folder`` into the repo id ``owner/repo`` and the subfolder (or None)."""
    parts = [p for p in name.strip("/").split("/") if p]
    if len(parts) < 2:
        raise ResolutionError(
            f"{name!r} is not an existing local path and not a hub id of the form 'owner/repo' "
            "(optionally followed by '/sub/folder'). Pass a directory, a file, or a hub id."
        )
    subfolder = "/".join(parts[2:]) or None
    return f"{parts[0]}/{parts[1]}", subfolder


def resolve_local_or_hub(
    name_or_path: str | os.PathLike,
    allow_patterns: list[str],
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Return a local directory holding the files of ``name_or_path``.

    A path that exists is returned as is; ``vit-sae-hooks/...`` names are checkpoints shipped in the package.
    Anything else is read as a hub id
    ``owner/repo[/subfolder]``; the files matching ``allow_patterns`` (relative to
    the subfolder) are fetched with ``huggingface_hub`` or, when the hub cannot be
    reached or ``HF_HUB_OFFLINE=1``, taken from the local cache.

    Example:
        >>> folder = resolve_local_or_hub("laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K", ["*.json"])
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if str(name_or_path).startswith(BUILTIN_PREFIX):
        builtin = builtin_folder(name_or_path)
        if builtin is None:
            raise ResolutionError(f"{str(name_or_path)!r} is not a built-in checkpoint; built-in: {builtin_names()}")
        return builtin
    repo_id, subfolder = split_hub_id(str(name_or_path))
    patterns = [f"{subfolder}/{p}" if subfolder else p for p in allow_patterns]

    import huggingface_hub

    kwargs = dict(repo_id=repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns)
    try:
        folder = huggingface_hub.snapshot_download(**kwargs)
    except Exception as online_error:
        logger.info("hub download of %s failed (%s); trying the local cache", repo_id, online_error)
        try:
            folder = huggingface_hub.snapshot_download(**kwargs, local_files_only=True)
        except Exception as cache_error:
            raise ResolutionError(
                f"could not find {str(name_or_path)!r}: it is not a local path, the hub could not "
                f"provide it ({type(online_error).__name__}: {online_error}), and the Hugging Face "
                f"cache has no copy ({type(cache_error).__name__}). Download it once while online, "
                "or pass the path of a local copy."
            ) from cache_error
    result = Path(folder) / subfolder if subfolder else Path(folder)
    if not result.exists():
        raise ResolutionError(
            f"hub repo {repo_id!r} has no folder {subfolder!r} matching {allow_patterns}; "
            "check the id (list the repo's files on the hub) or pass a local path."
        )
    return result
