"""Procedurally generated labelled shape images: a small real task that needs no download.

Each image is ``image_size x image_size`` RGB: one shape (circle, square, triangle, cross or ring) of a
random colour, size and position on a noisy background of random brightness. Generation is vectorised
torch code, deterministic from a seed, and fast enough to make batches on the fly.

Example:
    >>> images, labels = shapes.make_batch(64, seed=0)  # [64, 3, 32, 32] normalised, [64]
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_sae_hooks.data.preprocess import Preprocess, _pil
from vit_sae_hooks.errors import ConfigError

CLASSES = ("circle", "square", "triangle", "cross", "ring")
COLOURS = {
    "red": (0.9, 0.15, 0.15),
    "green": (0.15, 0.8, 0.2),
    "blue": (0.2, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
    "magenta": (0.85, 0.2, 0.8),
    "cyan": (0.15, 0.8, 0.85),
    "white": (0.95, 0.95, 0.95),
}
# Images are normalised with these per-channel statistics before the model sees them.
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
# Shape edges are anti-aliased by pixel coverage, which is what a box filter computes when a larger image is
# shrunk; the generated images fill the frame, so a resize to the square size crops nothing away.
INTERPOLATION, RESIZE_MODE = "box", "squash"


@dataclass
class ShapesBatch:
    """A generated batch: normalised images, class labels, and the nuisance factors behind them."""

    images: Float[Tensor, "batch 3 height width"]
    labels: Int[Tensor, " batch"]
    colours: Int[Tensor, " batch"]
    centres: Float[Tensor, "batch 2"]
    radii: Float[Tensor, " batch"]


def _masks(size: int, centres: Tensor, radii: Tensor) -> Float[Tensor, "batch n_classes height width"]:
    """Soft (anti-aliased) masks of every class's shape at each sample's centre and radius."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y = coords[None, :, None] - centres[:, 1, None, None]
    x = coords[None, None, :] - centres[:, 0, None, None]
    r = radii[:, None, None]
    distance = (x**2 + y**2).sqrt()

    def inside(signed: Tensor) -> Tensor:
        # signed < 0 inside; one pixel of linear ramp keeps edges smooth.
        return (0.5 - signed).clamp(0, 1)

    circle = inside(distance - r)
    square = inside(torch.maximum(x.abs(), y.abs()) - 0.8 * r)
    # An upward triangle: apex at y = -r, base at y = 0.7 r, sides widening by 0.6 per pixel of height.
    slant = (x.abs() - 0.6 * (y + r)) / (1 + 0.6**2) ** 0.5
    triangle = inside(torch.maximum(slant, y - 0.7 * r))
    arm = 0.3 * r
    cross = inside(torch.minimum(torch.maximum(x.abs() - arm, y.abs() - r), torch.maximum(y.abs() - arm, x.abs() - r)))
    ring = inside((distance - 0.75 * r).abs() - 0.25 * r)
    return torch.stack([circle, square, triangle, cross, ring], dim=1)


def make_batch(
    n: int, seed: int, image_size: int = 32, noise: float = 0.08, labels: Tensor | None = None
) -> ShapesBatch:
    """``n`` shape images generated deterministically from ``seed`` (labels drawn uniformly unless given).

    Example:
        >>> batch = make_batch(8, seed=1); batch.images.shape
        torch.Size([8, 3, 32, 32])
    """
    if n <= 0:
        raise ConfigError(f"n must be positive, got {n}")
    if image_size < 16:
        raise ConfigError(f"image_size must be at least 16 pixels for recognisable shapes, got {image_size}")
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        labels = torch.randint(len(CLASSES), (n,), generator=generator)
    elif labels.shape != (n,) or labels.min() < 0 or labels.max() >= len(CLASSES):
        raise ConfigError(f"labels must be {n} class ids in [0, {len(CLASSES)}), got {labels!r}")
    radii = image_size * (0.18 + 0.14 * torch.rand(n, generator=generator))
    margin = radii[:, None] + 1.0
    centres = margin + (image_size - 2 * margin) * torch.rand(n, 2, generator=generator)
    colour_ids = torch.randint(len(COLOURS), (n,), generator=generator)
    colours = torch.tensor(list(COLOURS.values()))[colour_ids]
    background = 0.05 + 0.35 * torch.rand(n, 1, 1, 1, generator=generator)
    mask = _masks(image_size, centres, radii)[torch.arange(n), labels][:, None]
    pixels = background * (1 - mask) + colours[:, :, None, None] * mask
    pixels = (pixels + noise * torch.randn(n, 3, image_size, image_size, generator=generator)).clamp(0, 1)
    images = (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return ShapesBatch(images=images, labels=labels.long(), colours=colour_ids, centres=centres, radii=radii)


def batches(batch_size: int, n_batches: int, seed: int, image_size: int = 32) -> Iterator[tuple[Tensor, Tensor]]:
    """``n_batches`` batches of ``(images, labels)``, each from its own seed derived from ``seed``.

    Example:
        >>> for images, labels in batches(64, 10, seed=0): ...
    """
    for index in range(n_batches):
        batch = make_batch(batch_size, seed=seed * 1_000_003 + index, image_size=image_size)
        yield batch.images, batch.labels


def unnormalize(images: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch 3 height width"]:
    """Pixels in [0, 1] from normalised shape images, for display."""
    return images * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]


def preprocess(image_size: int = 32) -> Preprocess:
    """The preprocessing that turns a shape image file into what :func:`make_batch` gives: the shipped shapes
    ViT's folder carries it (``preprocessor_config.json``), so ``preprocess_for(model)`` returns it.

    Example:
        >>> preprocess()(PIL.Image.open("shapes/circle/00000.png")).shape
        torch.Size([3, 32, 32])
    """
    return Preprocess(image_size, MEAN, STD, interpolation=INTERPOLATION, resize_mode=RESIZE_MODE)


def save_images(batch: ShapesBatch, root: str | os.PathLike) -> list[Path]:
    """Write a batch as an image folder, ``root/<class>/<index>.png`` (8-bit PNG), and return the paths in batch order.

    Reading the folder back with :func:`preprocess` gives the batch's images up to 8-bit rounding.

    Example:
        >>> paths = save_images(make_batch(100, seed=0), "shapes")  # shapes/circle/00003.png, ...
    """
    Image = _pil()
    root = Path(root)
    pixels = (unnormalize(batch.images).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    paths = []
    for index, (image, label) in enumerate(zip(pixels, batch.labels.tolist(), strict=True)):
        path = root / CLASSES[label] / f"{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
