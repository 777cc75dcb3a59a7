"""The feature browser on disk: its layout, the data files the page loads, and the atomic swap into place.

A site is a folder that any browser opens from ``file://``::

    index.html, browser.js, browser.css     the page (package data in ``static/``, copied as is)
    vit-sae-site.json                       marks the folder as a site this library wrote (and what it shows)
    data/meta.js                            the site's settings: model, SAE, token rows, shard sizes, classes
    data/summary.js                         per feature: image and token frequency, max activation, label
    data/features/NNNNN.js                  FEATURES_PER_SHARD features each: top images, maps, histograms...
    data/images/NNNNN.js                    IMAGES_PER_SHARD images each: name, class, strongest features per token
    thumbs/N.png|jpg                        each image once, as the model saw it (after resizing and cropping)

Data files are scripts calling ``vsh.loaded(key, data)``: a page opened from ``file://`` may load scripts from
its folder but not fetch files, so this is how the page reads them lazily, one shard at a time.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.files import read_json

SITE_FORMAT = "vit_sae_hooks.feature_site"
MARKER = "vit-sae-site.json"
FEATURES_PER_SHARD = 64
IMAGES_PER_SHARD = 100
STATIC = Path(__file__).parent / "static"
STATIC_FILES = ("index.html", "browser.js", "browser.css")
# Patch-map levels 0..63 are written one character each, in this order.
MAP_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def is_site(folder: Path) -> bool:
    """Whether ``folder`` holds a site written by :func:`~vit_sae_hooks.viz.build_site` (its marker file says so)."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    return read_json(marker, ConfigError, fix=f"delete {str(folder)!r} or choose another --out.").get("format") == SITE_FORMAT


def check_out_dir(out: Path) -> None:
    """Refuse an output path that is a file, or a folder with contents that is not a site: a rebuild replaces
    the whole folder, so it must never hold anything else.

    Example:
        >>> check_out_dir(Path("site"))  # absent, empty or an earlier site: fine
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the output {str(out)!r} is a file; pass a folder path for the site")
    if out.is_dir() and any(out.iterdir()) and not is_site(out):
        raise ConfigError(
            f"the output folder {str(out)!r} exists and is not a feature-browser site (it has no {MARKER} written by "
            "build_site / vit-sae browse); a build replaces the whole folder, so choose a new or empty folder, or "
            "delete this one"
        )


@contextmanager
def staged_site(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out`` to write the site into: on success it replaces ``out`` in one atomic step,
    on failure it is removed and ``out`` stays as it was.

    Example:
        >>> with staged_site(Path("site")) as folder:
        ...     (folder / "index.html").write_text("...")
    """
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        yield staging
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    if _exchange(staging, out):
        shutil.rmtree(staging)  # it now holds the previous site
        return
    # Without an atomic exchange, the old site is moved aside first: readers may briefly find no folder,
    # but never a half-written one.
    previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
    out.rename(previous / out.name)
    staging.rename(out)
    shutil.rmtree(previous)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_current_directory, rename_exchange = -100, 2
    return renameat2(at_current_directory, os.fsencode(first), at_current_directory, os.fsencode(second), rename_exchange) == 0


def write_data(folder: Path, key: str, data: Any) -> Path:
    """Write ``data`` as ``folder/data/<key>.js``, a script that hands it to the page.

    Example:
        >>> write_data(folder, "features/00003", {"first": 192, "features": [...]})
    """
    path = folder / "data" / f"{key}.js"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"vsh.loaded({json.dumps(key)}, {json.dumps(data, separators=(',', ':'), allow_nan=False)});\n")
    return path


def shard_key(kind: str, index: int) -> str:
    """The data key of shard ``index`` of ``kind`` ("features" or "images"), e.g. ``features/00003``."""
    return f"{kind}/{index:05d}"


def copy_static(folder: Path) -> None:
    """Copy the page itself (HTML, script, style) into the site."""
    for name in STATIC_FILES:
        shutil.copyfile(STATIC / name, folder / name)


def write_marker(folder: Path, description: dict[str, Any]) -> None:
    """Mark ``folder`` as a site this library wrote, with what it shows."""
    (folder / MARKER).write_text(json.dumps({"format": SITE_FORMAT, "version": 1, **description}, indent=2) + "\n")
