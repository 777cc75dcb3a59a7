"""Image folders, loaders and torchvision-free preprocessing, checked against transformers' PIL processors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from vit_sae_hooks import HookedViT, HookedViTConfig
from vit_sae_hooks.data import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    ImageFolder,
    Preprocess,
    image_loader,
    preprocess_for,
    preprocess_from_folder,
)
from vit_sae_hooks.errors import ConfigError, DataError

Image = pytest.importorskip("PIL.Image")


def random_image(width: int, height: int, seed: int, mode: str = "RGB"):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def make_folder(root, classes=("cat", "dog", "eel"), per_class=3):
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            random_image(40 + 7 * index, 30 + 5 * label, seed=10 * label + index).save(root / name / f"{index}.png")
    return root


def hf_pixels(processor, image) -> torch.Tensor:
    return torch.as_tensor(np.asarray(processor(images=image, return_tensors="np")["pixel_values"][0]))


@pytest.mark.parametrize("size", [(40, 30), (30, 47), (64, 64), (20, 12)])
def test_clip_preprocess_matches_transformers(size):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image = random_image(*size, seed=sum(size))
    processor = CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    ours = Preprocess(24, CLIP_MEAN, CLIP_STD)(image)
    assert ours.shape == (3, 24, 24)
    # transformers floors the crop offset where torchvision rounds; both agree on these sizes.
    torch.testing.assert_close(ours, hf_pixels(processor, image).float(), atol=1e-5, rtol=0)


def test_vit_squash_preprocess_matches_transformers(tmp_path):
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    image = random_image(50, 33, seed=3, mode="L")
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN, image_std=(0.2, 0.3, 0.4))
    processor.save_pretrained(tmp_path)
    ours = preprocess_from_folder(tmp_path)
    assert ours.resize_mode == "squash" and ours.image_size == (32, 32)
    # transformers' ViT processor does not convert greyscale; ours does, as open_clip does.
    torch.testing.assert_close(ours(image), hf_pixels(processor, image.convert("RGB")).float(), atol=1e-5, rtol=0)


def test_preprocess_configs_from_folders(tmp_path):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    CLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    found = preprocess_from_folder(tmp_path)
    assert (found.image_size, found.resize_size, found.resize_mode, found.interpolation) == ((32, 32), 36, "shortest", "bicubic")
    assert found.mean == pytest.approx(CLIP_MEAN)

    open_clip = tmp_path / "open_clip"
    open_clip.mkdir()
    (open_clip / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"vision_cfg": {"image_size": 48}}, "preprocess_cfg": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}}
    ))
    found = preprocess_from_folder(open_clip)
    assert found.image_size == (48, 48) and found.mean == (0.1, 0.2, 0.3) and found.resize_mode == "shortest"


def test_preprocess_for_model_uses_family_defaults():
    cfg = HookedViTConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, image_size=16, patch_size=8,
                          original_architecture="Dinov2Model")
    found = preprocess_for(HookedViT(cfg))
    assert found.image_size == (16, 16) and found.mean == IMAGENET_MEAN
    cfg.original_architecture = "CLIPVisionModel"
    assert preprocess_for(HookedViT(cfg)).mean == CLIP_MEAN
    with pytest.raises(ConfigError, match="needs a HookedViT"):
        preprocess_for(42)


def test_preprocess_rejects_bad_settings():
    with pytest.raises(ConfigError, match="interpolation='cubic'"):
        Preprocess(24, interpolation="cubic")
    with pytest.raises(ConfigError, match="three values"):
        Preprocess(24, mean=(0.5,), std=(0.5,))


def test_small_image_is_padded_then_cropped():
    image = random_image(8, 8, seed=0)
    assert Preprocess(16, resize_mode="shortest", resize_size=8)(image).shape == (3, 16, 16)


def test_image_folder_classes_limit_and_loader(tmp_path):
    root = make_folder(tmp_path / "images")
    dataset = ImageFolder(root, transform=Preprocess(16), limit=4)
    assert dataset.classes == ["cat", "dog", "eel"]
    # limit spreads over classes: the 4 images cover every class.
    assert dataset.labels == [0, 1, 2, 0]
    loader = image_loader(root, Preprocess(16), batch_size=3, num_workers=0, limit=5)
    batches = list(loader)
    assert [tuple(images.shape) for images, _ in batches] == [(3, 3, 16, 16), (2, 3, 16, 16)]
    assert torch.cat([labels for _, labels in batches]).tolist() == [0, 1, 2, 0, 1]
    assert len(ImageFolder(root)) == 9


def test_flat_folder_and_from_files_are_unlabelled_or_labelled(tmp_path):
    for index in range(3):
        random_image(20, 20, seed=index).save(tmp_path / f"{index}.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    flat = ImageFolder(tmp_path)
    assert len(flat) == 3 and flat.labels == [-1, -1, -1] and flat.classes == []
    files = sorted(tmp_path.glob("*.jpg"))
    listed = ImageFolder.from_files(files, labels=[2, 0, 1], classes=["a", "b", "c"], transform=Preprocess(8))
    image, label = listed[0]
    assert image.shape == (3, 8, 8) and label == 2
    with pytest.raises(DataError, match="3 files but 2 labels"):
        ImageFolder.from_files(files, labels=[0, 1])
    with pytest.raises(DataError, match=r"labels \[5\] are outside the 3 classes"):
        ImageFolder.from_files(files, labels=[0, 1, 5], classes=["a", "b", "c"])


def test_bad_folders_and_images_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images found in .*empty.*\['cat'\]"):
        ImageFolder(tmp_path / "empty")
    root = make_folder(tmp_path / "broken", classes=("cat",), per_class=1)
    (root / "cat" / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dataset = ImageFolder(root, transform=Preprocess(8))
    with pytest.raises(DataError, match=r"cannot read image .*zz_truncated\.png"):
        dataset[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"zz_truncated\.png"):
            list(image_loader(dataset, batch_size=2, num_workers=1))
    with pytest.raises(DataError, match="needs a transform"):
        image_loader(root)
    with pytest.raises(DataError, match="limit=0"):
        ImageFolder(root, limit=0)


def test_shipped_imagenet_names_and_templates():
    from vit_sae_hooks.data.imagenet import imagenet_class_names, imagenet_templates

    names = imagenet_class_names()
    assert len(names) == 1000
    assert (names[0], names[207], names[281], names[417], names[999]) == (
        "tench", "Golden Retriever", "tabby cat", "balloon", "toilet paper"
    )
    assert len(imagenet_templates()) == 80 and all("{}" in t for t in imagenet_templates())
    assert len(imagenet_templates("simple")) == 7
    with pytest.raises(ConfigError, match="template set 'fancy'"):
        imagenet_templates("fancy")


@pytest.mark.parametrize(
    "preprocess",
    [Preprocess(32, (0.5,) * 3, (0.25,) * 3, interpolation="box", resize_mode="squash"),
     Preprocess((24, 20), CLIP_MEAN, CLIP_STD, resize_size=30, interpolation="bilinear")],
)
def test_saved_preprocessing_reads_back(tmp_path, preprocess):
    preprocess.save(tmp_path)
    found = preprocess_from_folder(tmp_path)
    assert found == preprocess
    image = random_image(45, 37, seed=4)
    torch.testing.assert_close(found(image), preprocess(image), atol=0, rtol=0)
