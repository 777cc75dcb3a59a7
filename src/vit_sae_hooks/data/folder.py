"""Image datasets (class subfolders in the ImageNet layout, or files with labels) and their DataLoader."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vit_sae_hooks.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jpe")

UNLABELLED = -1


def _is_image(path: Path, extensions: Sequence[str]) -> bool:
    return path.is_file() and path.suffix.lower() in extensions and not path.name.startswith(".")


def _spread_over_classes(samples: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
    """Order samples round-robin over classes, so the first ``n`` of them cover as many classes as they can."""
    rank_in_class: dict[int, int] = defaultdict(int)
    keyed = []
    for path, label in samples:
        keyed.append((rank_in_class[label], label, path))
        rank_in_class[label] += 1
    return [(path, label) for _, label, path in sorted(keyed, key=lambda item: (item[0], item[1]))]


class ImageFolder(Dataset):
    """Images under ``root``: one subfolder per class (ImageNet layout, classes in sorted folder order), or
    image files directly in ``root`` (unlabelled: label ``-1``).

    Items are ``(transform(image), label)``. Images are ordered round-robin over classes, so ``limit=n``
    keeps ``n`` images spread over the classes (not the first class's images). ``ImageFolder.from_files``
    builds one from explicit paths and labels.

    Example:
        >>> dataset = ImageFolder("imagenet/val", transform=preprocess_for(model), limit=1000)
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Any], Any] | None = None,
        limit: int | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"image folder {str(root)!r} does not exist or is not a directory; pass the dataset's root folder")
        extensions = tuple(e.lower() for e in extensions)
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        samples: list[tuple[Path, int]] = []
        if class_dirs:
            for label, class_dir in enumerate(class_dirs):
                samples += [(path, label) for path in sorted(class_dir.rglob("*")) if _is_image(path, extensions)]
            classes = [p.name for p in class_dirs]
        else:
            samples = [(path, UNLABELLED) for path in sorted(root.iterdir()) if _is_image(path, extensions)]
            classes = []
        if not samples:
            layout = f"class subfolders {[p.name for p in class_dirs[:5]]}" if class_dirs else "no subfolders"
            raise DataError(
                f"no images found in {str(root)!r} ({layout}); expected files ending in {', '.join(extensions)} in "
                "class subfolders (root/<class>/<image>) or directly in the folder"
            )
        self.root = root
        self._init(_spread_over_classes(samples), classes, transform, limit)

    def _init(self, samples: list[tuple[Path, int]], classes: list[str], transform, limit: int | None) -> None:
        if limit is not None:
            if limit <= 0:
                raise DataError(f"limit={limit} must be a positive number of images (or None for all)")
            samples = samples[:limit]
        self.samples = samples
        self.classes = classes
        self.class_to_index = {name: index for index, name in enumerate(classes)}
        self.transform = transform

    @classmethod
    def from_files(
        cls,
        files: Sequence[str | os.PathLike],
        labels: Sequence[int] | None = None,
        transform: Callable[[Any], Any] | None = None,
        classes: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> ImageFolder:
        """A dataset of the given image files, with integer ``labels`` (indices into ``classes`` if given).

        Example:
            >>> dataset = ImageFolder.from_files(["a.jpg", "b.jpg"], labels=[3, 7], transform=preprocess)
        """
        paths = [Path(f).expanduser() for f in files]
        if not paths:
            raise DataError("from_files got no files; pass at least one image path")
        if labels is None:
            labels = [UNLABELLED] * len(paths)
        labels = [int(label) for label in labels]
        if len(labels) != len(paths):
            raise DataError(f"from_files got {len(paths)} files but {len(labels)} labels; pass one label per file")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} image files do not exist, e.g. {missing[:3]}; check the paths")
        classes = list(classes or [])
        if classes:
            bad = sorted({label for label in labels if not 0 <= label < len(classes)})
            if bad:
                raise DataError(f"labels {bad[:5]} are outside the {len(classes)} classes given; labels index into classes")
        dataset = cls.__new__(cls)
        dataset.root = None
        dataset._init(list(zip(paths, labels, strict=True)), classes, transform, limit)
        return dataset

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_image(path)
        return (self.transform(image) if self.transform is not None else image), label

    @property
    def labels(self) -> list[int]:
        """Every sample's label, in dataset order (``-1`` for unlabelled images)."""
        return [label for _, label in self.samples]

    def __repr__(self) -> str:
        where = str(self.root) if self.root is not None else "files"
        return f"ImageFolder({where!r}, {len(self)} images, {len(self.classes)} classes)"


def load_image(path: str | os.PathLike):
    """Open an image file fully (so a truncated file fails here, naming the file), as a PIL image.

    Example:
        >>> load_image("imagenet/val/n01440764/ILSVRC2012_val_00000293.JPEG").size
        (500, 375)
    """
    from vit_sae_hooks.data.preprocess import _pil

    Image = _pil()
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(
            f"cannot read image {str(path)!r} ({type(error).__name__}: {error}); delete or replace the file, or "
            "remove it from the dataset"
        ) from error


def image_loader(
    dataset_or_root: Dataset | str | os.PathLike,
    transform: Callable[[Any], Any] | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    limit: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader of ``(images [batch, 3, H, W], labels [batch])`` from an image folder or a dataset.

    ``num_workers`` defaults to the CPU count (at most 8); decoding JPEGs is the bottleneck of evaluation.
    A folder needs a ``transform`` (usually ``preprocess_for(model)``) so that images can be batched.

    Example:
        >>> loader = image_loader("imagenet/val", preprocess_for(model), batch_size=128, limit=5000)
    """
    if isinstance(dataset_or_root, (str, os.PathLike)):
        if transform is None:
            raise DataError(
                "image_loader needs a transform to turn the images of a folder into tensors; pass "
                "transform=preprocess_for(model)"
            )
        dataset = ImageFolder(dataset_or_root, transform=transform, limit=limit)
    else:
        dataset = dataset_or_root
        if transform is not None:
            raise DataError("pass transform= only with a folder; set the dataset's own transform instead")
        if limit is not None:
            dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, pin_memory=pin_memory,
        drop_last=drop_last, generator=generator, persistent_workers=False,
    )
