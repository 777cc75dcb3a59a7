"""Image data for evaluation and training: folders of images, torchvision-free preprocessing, loaders.

Example:
    >>> from vit_sae_hooks.data import image_loader, preprocess_for
    >>> loader = image_loader("imagenet/val", preprocess_for(model), batch_size=128, limit=5000)
"""

from vit_sae_hooks.data.folder import IMAGE_EXTENSIONS, UNLABELLED, ImageFolder, image_loader, load_image
from vit_sae_hooks.data.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    center_crop,
    preprocess_for,
    preprocess_from_folder,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "UNLABELLED",
    "ImageFolder",
    "Preprocess",
    "center_crop",
    "image_loader",
    "load_image",
    "preprocess_for",
    "preprocess_from_folder",
]
