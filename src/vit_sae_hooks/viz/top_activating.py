"""The images (and patches) that activate SAE features most, streamed over a dataset in bounded memory."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vit_sae_hooks.checks import positive_int
from vit_sae_hooks.data.batches import image_batches, limited_batches
from vit_sae_hooks.errors import ConfigError, DataError, InputShapeError
from vit_sae_hooks.viz.heatmap import FeatureSpec, feature_ids, patch_grid_size, patch_maps, token_activations

if TYPE_CHECKING:
    from vit_sae_hooks.model import HookedViT
    from vit_sae_hooks.sae import SAE

Reduce = Literal["max", "mean"]


@dataclass
class TopActivations:
    """For each feature, its ``k`` top-activating images, best first (ties: the earlier image first).

    ``scores`` are each image's max (or mean) activation over the SAE's tokens; ``image_indices`` count
    images in the order the data yielded them. ``patch_maps`` is None for SAEs that read no patch (CLS-only);
    ``images`` is None with ``keep_images=False``; ``labels`` is None for unlabelled data. Fewer than ``k``
    columns when the data held fewer than ``k`` images.

    Example:
        >>> top = top_activating(model, sae, loader, features=[3, 17], k=9)
        >>> top.scores[top.row(17)]  # [9], best first
    """

    features: Int[Tensor, " n_features"]
    scores: Float[Tensor, "n_features k"]
    image_indices: Int[Tensor, "n_features k"]
    patch_maps: Float[Tensor, "n_features k grid_h grid_w"] | None
    images: Float[Tensor, "n_features k channels height width"] | None
    labels: Int[Tensor, "n_features k"] | None
    class_names: list[str] | None
    hook_name: str
    token_set: str
    reduce: Reduce
    n_images: int

    def row(self, feature: int) -> int:
        """The row of ``feature`` in every tensor of this result.

        Example:
            >>> top.images[top.row(17), 0]  # feature 17's top image
        """
        matches = (self.features == int(feature)).nonzero().flatten()
        if matches.numel() == 0:
            shown = self.features.tolist()
            raise ConfigError(
                f"feature {feature} was not collected (collected: {shown[:20]}{' ...' if len(shown) > 20 else ''}); "
                "include it in top_activating(features=...)"
            )
        return int(matches[0])


def merge_top(
    kept: Float[Tensor, "n_features n_kept"], new: Float[Tensor, "n_features batch"], k: int
) -> tuple[Float[Tensor, "n_features k"], Int[Tensor, "n_features k"]]:
    """The ``k`` best scores of each row of ``kept`` followed by ``new``, best first, and where each came from
    (a column of the concatenation: below ``n_kept`` a kept entry, else ``n_kept +`` its column in ``new``).

    The sort is stable and kept entries come first, so a tie goes to the image seen earlier.

    Example:
        >>> scores, order = merge_top(torch.tensor([[3.0, 1.0]]), torch.tensor([[2.0, 1.0]]), k=2)
        >>> order
        tensor([[0, 2]])
    """
    combined = torch.cat([kept, new], dim=1)
    order = combined.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return combined.gather(1, order), order


class _RunningTopK:
    """The ``k`` best images per feature so far, with their maps, indices and labels (CPU tensors)."""

    def __init__(self, n_features: int, k: int):
        self.n_features, self.k = n_features, k
        self.scores: Tensor | None = None
        self.image_indices = self.images = self.maps = self.labels = None

    def update(
        self,
        scores: Float[Tensor, "batch n_features"],
        image_indices: Int[Tensor, " batch"],
        images: Float[Tensor, "batch channels height width"] | None,
        maps: Float[Tensor, "batch n_features grid_h grid_w"] | None,
        labels: Int[Tensor, " batch"] | None,
    ) -> None:
        n_features, batch = self.n_features, scores.shape[0]
        if self.scores is None:
            self.scores = scores.new_empty((n_features, 0))
            self.image_indices = image_indices.new_empty((n_features, 0))
            self.images = None if images is None else images.new_empty((n_features, 0, *images.shape[1:]))
            self.maps = None if maps is None else maps.new_empty((n_features, 0, *maps.shape[2:]))
            self.labels = None if labels is None else labels.new_empty((n_features, 0))
        kept = self.scores.shape[1]
        self.scores, order = merge_top(self.scores, scores.T, self.k)
        from_kept = order < kept
        feature_row = torch.arange(n_features)[:, None]
        new_image = order - kept
        self.image_indices = torch.cat([self.image_indices, image_indices.expand(n_features, batch)], 1).gather(1, order)
        if self.labels is not None:
            self.labels = torch.cat([self.labels, labels.expand(n_features, batch)], 1).gather(1, order)
        # Images and maps are gathered from one pool (kept slots, then the batch), so at most
        # n_features * k + batch of them exist at once.
        kept_slot = feature_row * kept + order
        if self.images is not None:
            pool = torch.cat([self.images.flatten(0, 1), images])
            self.images = pool[torch.where(from_kept, kept_slot, n_features * kept + new_image)]
        if self.maps is not None:
            pool = torch.cat([self.maps.flatten(0, 1), maps.transpose(0, 1).flatten(0, 1)])
            self.maps = pool[torch.where(from_kept, kept_slot, n_features * kept + feature_row * batch + new_image)]


def streamed_batches(
    batches: Iterable, limit: int | None, total: int | None, description: str, progress: bool
) -> Iterator[tuple[Float[Tensor, "batch channels height width"], Int[Tensor, " batch"] | None]]:
    """The ``(images, labels or None)`` batches of :func:`~vit_sae_hooks.data.batches.image_batches`, cut at
    ``limit``, with a progress bar on stderr; images of another size than the first raise.

    Example:
        >>> batches, total, _ = image_batches(model, "imagenet/val", None, 64, 5000, None)
        >>> for images, labels in streamed_batches(batches, 5000, total, "top images", progress=True): ...
    """
    from tqdm.auto import tqdm

    first_shape = None
    with tqdm(total=total, unit="img", desc=description, file=sys.stderr, disable=not progress) as bar:
        for images, labels in limited_batches(batches, limit):
            first_shape = first_shape or tuple(images.shape[1:])
            if tuple(images.shape[1:]) != first_shape:
                raise InputShapeError(
                    f"images of shape {tuple(images.shape[1:])} follow images of shape {first_shape}; every image "
                    "must have the same size (preprocess them all with the same transform)"
                )
            yield images, labels
            bar.update(images.shape[0])


def model_device(model: HookedViT, sae: SAE) -> tuple[torch.device, torch.dtype]:
    """The device and dtype images must have for ``model``, once ``sae`` is checked to sit on the same device.

    Example:
        >>> model_device(model, sae)
        (device(type='cpu'), torch.float32)
    """
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    if sae.W_enc.device != device:
        raise ConfigError(f"the SAE is on {sae.W_enc.device} but the model on {device}; move it with sae.to({str(device)!r})")
    return device, dtype


def top_activating(
    model: HookedViT,
    sae: SAE,
    data: Tensor | DataLoader | Dataset | Iterable | str | os.PathLike,
    features: FeatureSpec,
    k: int = 16,
    reduce: Reduce = "max",
    labels: Int[Tensor, " n_images"] | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    num_workers: int | None = None,
    keep_images: bool = True,
    progress: bool = True,
) -> TopActivations:
    """The ``k`` images of ``data`` on which each of ``features`` fires most, with per-patch activation maps.

    The model runs batch by batch with ``sae`` spliced in at its hook (up to the hook's block only); an
    image's score is its max (``reduce="max"``) or mean activation over the SAE's tokens (``sae.token_set``).
    Only ``k`` images per feature are kept, so memory does not grow with the dataset. A progress bar goes to
    stderr.

    Args:
        data: preprocessed images ``[n, C, H, W]`` (with optional ``labels``), an image folder (preprocessed
            with :func:`~vit_sae_hooks.data.preprocess_for`), a dataset of ``(image, label)``, or any iterable
            of image batches or ``(images, labels)`` batches such as a DataLoader.
        features: a feature index or a list of them.
        batch_size, num_workers: used when ``data`` is a tensor, folder or dataset.
        limit: stop after this many images.
        keep_images: False keeps only indices, scores and maps (then re-read images by ``image_indices``).

    Example:
        >>> top = top_activating(model, sae, "imagenet/val", features=[3, 17], k=16, limit=5000)
    """
    ids = feature_ids(features, sae)
    positive_int("k", k, "Pass the number of images to keep per feature.")
    if reduce not in ("max", "mean"):
        raise ConfigError(f"reduce={reduce!r} is not 'max' or 'mean'")
    device, dtype = model_device(model, sae)
    batches, total, dataset = image_batches(model, data, labels, batch_size, limit, num_workers)
    running = _RunningTopK(len(ids), k)
    seen = 0
    for images, batch_labels in streamed_batches(batches, limit, total, f"top images {sae.hook_name}", progress):
        if running.scores is not None and (batch_labels is None) != (running.labels is None):
            raise DataError(
                f"the batch starting at image {seen} {'has no' if batch_labels is None else 'has'} labels "
                "unlike the batches before it; yield labels with every batch or with none"
            )
        batch = images.shape[0]
        acts, positions = token_activations(model, sae, images.to(device=device, dtype=dtype), ids)
        scores = acts.amax(dim=1) if reduce == "max" else acts.mean(dim=1)
        maps = patch_maps(acts, positions, model.cfg.n_prefix_tokens, patch_grid_size(model, images), model.token_layout)
        running.update(
            scores.cpu(),
            torch.arange(seen, seen + batch),
            images.detach().cpu() if keep_images else None,
            None if maps is None else maps.cpu(),
            None if batch_labels is None else torch.as_tensor(batch_labels).long().cpu(),
        )
        seen += batch
    if seen == 0:
        raise DataError("the data yielded no images; check the folder, dataset, loader or limit")
    classes = getattr(dataset, "classes", None)
    return TopActivations(
        features=ids, scores=running.scores, image_indices=running.image_indices, patch_maps=running.maps,
        images=running.images, labels=running.labels, class_names=list(classes) if classes else None,
        hook_name=str(sae.hook_name), token_set=sae.token_set, reduce=reduce, n_images=seen,
    )
