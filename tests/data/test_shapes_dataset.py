"""The procedural shapes dataset: deterministic, balanced, each class a distinct visible shape."""

from __future__ import annotations

import pytest
import torch

from vit_sae_hooks.data import shapes
from vit_sae_hooks.errors import ConfigError


def test_same_seed_same_images_other_seed_other_images():
    first, again, other = shapes.make_batch(16, seed=3), shapes.make_batch(16, seed=3), shapes.make_batch(16, seed=4)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.allclose(first.images, other.images)


def test_batches_are_normalised_images_with_all_classes():
    batch = shapes.make_batch(500, seed=0)
    assert batch.images.shape == (500, 3, 32, 32) and batch.labels.dtype == torch.long
    counts = torch.bincount(batch.labels, minlength=len(shapes.CLASSES))
    assert counts.min() > 70
    pixels = shapes.unnormalize(batch.images)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_each_class_draws_its_own_shape():
    # Same centre, radius, colour and noise for every class: only the mask differs, and each mask has
    # the area its geometry implies (a ring is the circle minus its hole; a cross is thinner than a square).
    labels = torch.arange(len(shapes.CLASSES))
    areas = {}
    for label in labels:
        batch = shapes.make_batch(1, seed=7, noise=0.0, labels=label[None])
        pixels = shapes.unnormalize(batch.images)[0]
        colour = torch.tensor(list(shapes.COLOURS.values()))[batch.colours[0]]
        background = pixels[:, 0, 0]  # a corner is never covered
        channel = int((colour - background).abs().argmax())
        # Without noise each pixel is background*(1-m) + colour*m, so m recovers the anti-aliased coverage.
        coverage = (pixels[channel] - background[channel]) / (colour[channel] - background[channel])
        areas[shapes.CLASSES[int(label)]] = coverage.sum().item() / batch.radii[0].item() ** 2
    assert areas["circle"] == pytest.approx(torch.pi, rel=0.15)
    assert areas["square"] == pytest.approx(1.6**2, rel=0.15)
    assert areas["ring"] == pytest.approx(torch.pi * (1 - 0.5**2), rel=0.2)
    assert areas["cross"] < areas["square"] and areas["triangle"] < areas["square"]


def test_bad_arguments():
    with pytest.raises(ConfigError, match="n must be positive"):
        shapes.make_batch(0, seed=0)
    with pytest.raises(ConfigError, match="at least 16 pixels"):
        shapes.make_batch(4, seed=0, image_size=8)
    with pytest.raises(ConfigError, match="class ids"):
        shapes.make_batch(2, seed=0, labels=torch.tensor([0, 9]))
