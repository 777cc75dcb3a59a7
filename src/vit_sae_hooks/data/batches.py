"""Turning the many forms image data arrives in (tensors, folders, datasets, loaders) into batches."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from vit_sae_hooks.errors import DataError

if TYPE_CHECKING:
    from vit_sae_hooks.model import HookedViT


def base_dataset(data: Any) -> Any:
    """The dataset under a loader or subset (where class names live)."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def image_batches(
    model: HookedViT, data: Any, labels: Tensor | None, batch_size: int, limit: int | None, num_workers: int | None
) -> tuple[Iterable, int | None, Any]:
    """An iterable of ``(images, labels or None)``, the number of images if known, and the underlying dataset.

    ``data`` is an images tensor (with ``labels``), an image folder path, a dataset, or a loader.

    Example:
        >>> batches, total, dataset = image_batches(model, "imagenet/val", None, 64, 5000, None)
    """
    from vit_sae_hooks.data.folder import image_loader
    from vit_sae_hooks.data.preprocess import preprocess_for

    if isinstance(data, Tensor):
        if labels is not None and labels.shape[0] != data.shape[0]:
            raise DataError(f"{data.shape[0]} images but {labels.shape[0]} labels; pass one label per image")
        n = data.shape[0] if limit is None else min(limit, data.shape[0])
        chunks = (
            (data[start : start + batch_size], None if labels is None else labels[start : start + batch_size])
            for start in range(0, n, batch_size)
        )
        return chunks, n, None
    if labels is not None:
        raise DataError("labels= goes with an images tensor; a dataset or loader brings its own labels")
    if isinstance(data, (str, os.PathLike)):
        data = image_loader(data, preprocess_for(model), batch_size=batch_size, num_workers=num_workers, limit=limit)
    elif isinstance(data, Dataset) and not isinstance(data, DataLoader) and hasattr(data, "__len__"):
        data = image_loader(data, batch_size=batch_size, num_workers=num_workers, limit=limit)
    dataset = base_dataset(data)
    try:
        total = len(data.dataset) if isinstance(data, DataLoader) else None
    except TypeError:
        total = None
    if limit is not None and total is not None:
        total = min(total, limit)
    return data, total, dataset


def as_images_and_labels(item: Any) -> tuple[Tensor, Tensor | None]:
    """``(images, labels or None)`` from one batch: a tensor, an ``(images, labels)`` pair or a dict with pixel_values."""
    if isinstance(item, Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], Tensor):
        return item[0], (torch.as_tensor(item[1]) if len(item) > 1 and item[1] is not None else None)
    if isinstance(item, Mapping) and "pixel_values" in item:
        return item["pixel_values"], item.get("labels", item.get("label"))
    raise DataError(
        f"cannot read a batch of type {type(item).__name__}; a loader must yield image tensors [batch, 3, H, W] or "
        "(images, labels) pairs"
    )


def limited_batches(batches: Iterable, limit: int | None) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``(images, labels or None)`` for each batch, cut so that at most ``limit`` images come out in all.

    Example:
        >>> for images, labels in limited_batches(loader, limit=1000): ...
    """
    seen = 0
    for item in batches:
        images, labels = as_images_and_labels(item)
        if limit is not None:
            images = images[: limit - seen]
            labels = None if labels is None else labels[: images.shape[0]]
        if images.shape[0] == 0:
            return
        yield images, labels
        seen += images.shape[0]
        if limit is not None and seen >= limit:
            return
