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


# Forward keywords a batch may carry besides its pixels: SigLIP 2's NaFlex inputs, as its processor returns them.
MODEL_INPUTS = ("pixel_attention_mask", "spatial_shapes")


def model_batches(batches: Iterable, limit: int | None) -> Iterator[tuple[Tensor, Tensor | None, dict[str, Tensor]]]:
    """``(images, labels or None, forward keywords)`` for each batch, cut so that at most ``limit`` images come out.

    A dict batch may carry SigLIP 2's NaFlex inputs next to ``pixel_values`` (``pixel_attention_mask``,
    ``spatial_shapes``: what ``Siglip2ImageProcessor`` returns); they come back as the forward keywords.

    Example:
        >>> for images, labels, inputs in model_batches(loader, limit=1000): model(images, **inputs)
    """
    seen = 0
    for item in batches:
        images, labels = as_images_and_labels(item)
        inputs = {name: item[name] for name in MODEL_INPUTS if isinstance(item, Mapping) and item.get(name) is not None}
        if limit is not None:
            images = images[: limit - seen]
            labels = None if labels is None else labels[: images.shape[0]]
            inputs = {name: value[: images.shape[0]] for name, value in inputs.items()}
        if images.shape[0] == 0:
            return
        yield images, labels, inputs
        seen += images.shape[0]
        if limit is not None and seen >= limit:
            return


def limited_batches(batches: Iterable, limit: int | None) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``(images, labels or None)`` for each batch, cut so that at most ``limit`` images come out in all (for
    code that runs the model on plain images only; NaFlex batches are refused, see :func:`model_batches`).

    Example:
        >>> for images, labels in limited_batches(loader, limit=1000): ...
    """
    for images, labels, inputs in model_batches(batches, limit):
        if inputs:
            raise DataError(
                f"this batch carries {sorted(inputs)} (SigLIP 2 NaFlex inputs), which this function does not pass to "
                "the model; give it plain images [batch, 3, H, W] (evaluate takes NaFlex batches)"
            )
        yield images, labels
