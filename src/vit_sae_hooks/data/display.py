"""Preprocessed images back to displayable RGB (what figures, the feature browser and circuit pictures show)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vit_sae_hooks.checks import described_shape
from vit_sae_hooks.errors import ConfigError, InputShapeError

Unnormalize = Any | tuple[Sequence[float], Sequence[float]] | None


def displayable_image(
    image: Float[Tensor, "channels height width"], unnormalize: Unnormalize = None
) -> Float[np.ndarray, "height width 3"]:
    """A preprocessed image as RGB values in [0, 1] for ``imshow``, undoing the model's normalisation.

    ``unnormalize`` is the :class:`~vit_sae_hooks.data.Preprocess` the images went through (or any object
    with ``mean`` and ``std``), a ``(mean, std)`` pair, or None to stretch each image to [0, 1].

    Example:
        >>> rgb = displayable_image(images[0], preprocess_for(model))  # [224, 224, 3]
    """
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
        shape = described_shape(image)
        raise InputShapeError(f"an image to display must be [1 or 3, height, width], got {shape}")
    pixels = image.detach().to("cpu", torch.float64)
    if unnormalize is None:
        low, high = pixels.min(), pixels.max()
        pixels = (pixels - low) / (high - low) if high > low else torch.zeros_like(pixels)
    else:
        mean, std = _mean_std(unnormalize, pixels.shape[0])
        pixels = pixels * std + mean
    return pixels.clamp(0, 1).expand(3, -1, -1).permute(1, 2, 0).numpy()


def _mean_std(unnormalize: Unnormalize, n_channels: int) -> tuple[Tensor, Tensor]:
    if hasattr(unnormalize, "mean") and hasattr(unnormalize, "std"):
        mean, std = unnormalize.mean, unnormalize.std
    elif isinstance(unnormalize, (tuple, list)) and len(unnormalize) == 2:
        mean, std = unnormalize
    else:
        raise ConfigError(
            f"unnormalize={unnormalize!r} is neither a Preprocess nor a (mean, std) pair; pass "
            "preprocess_for(model), (mean, std) or None"
        )
    mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
    std = torch.as_tensor(std, dtype=torch.float64).flatten()
    if mean.numel() != n_channels or std.numel() != n_channels:
        raise ConfigError(
            f"unnormalize has {mean.numel()} means and {std.numel()} stds for images with {n_channels} channels; "
            "give one of each per channel"
        )
    return mean.view(-1, 1, 1), std.view(-1, 1, 1)
