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


def test_shipped_model_reads_shape_images_from_disk_as_it_was_trained(tmp_path):
    """Images written to disk and read back through the folder route give the in-memory dataset's activations."""
    from vit_sae_hooks import HookedViT
    from vit_sae_hooks.data import IMAGENET_MEAN, IMAGENET_STD, Preprocess, image_loader, preprocess_for
    from vit_sae_hooks.demo.build import MODEL_NAME, SAE_HOOK

    model = HookedViT.from_pretrained(MODEL_NAME).eval()
    preprocess = preprocess_for(model)
    assert preprocess == preprocess_for(MODEL_NAME) == shapes.preprocess()
    assert (preprocess.mean, preprocess.std) == (shapes.MEAN, shapes.STD)
    batch = shapes.make_batch(30, seed=11)
    paths = shapes.save_images(batch, tmp_path)

    def activations(preprocessing) -> tuple[torch.Tensor, list[str], list[str]]:
        loader = image_loader(tmp_path, preprocessing, batch_size=8, num_workers=0)
        images, labels = map(torch.cat, zip(*loader, strict=True))
        files = [str(path.relative_to(tmp_path)) for path, _ in loader.dataset.samples]
        _, cache = model.run_with_cache(images, names_filter=[SAE_HOOK])
        return cache[SAE_HOOK], files, [loader.dataset.classes[label] for label in labels]

    from_disk, files, classes = activations(preprocess)
    in_batch_order = [files.index(str(path.relative_to(tmp_path))) for path in paths]
    from_disk = from_disk[in_batch_order]
    assert [classes[i] for i in in_batch_order] == [shapes.CLASSES[label] for label in batch.labels]
    # The PNGs hold 8-bit pixels: the same rounding of the in-memory images gives bit-identical activations.
    rounded = (shapes.unnormalize(batch.images).clamp(0, 1) * 255).round() / 255
    mean, std = torch.tensor(shapes.MEAN).view(3, 1, 1), torch.tensor(shapes.STD).view(3, 1, 1)
    _, cache = model.run_with_cache((rounded - mean) / std, names_filter=[SAE_HOOK])
    assert torch.equal(from_disk, cache[SAE_HOOK])
    # Against the unrounded dataset the difference is rounding noise; ImageNet statistics were far off.
    _, cache = model.run_with_cache(batch.images, names_filter=[SAE_HOOK])
    scale = cache[SAE_HOOK].abs().mean()
    assert (from_disk - cache[SAE_HOOK]).abs().mean() < 0.01 * scale
    imagenet, _, _ = activations(Preprocess(32, IMAGENET_MEAN, IMAGENET_STD))
    assert (imagenet[in_batch_order] - cache[SAE_HOOK]).abs().mean() > 0.1 * scale
