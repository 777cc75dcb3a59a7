"""Image preprocessing for CLIP / ViT / DINO / SigLIP checkpoints with PIL and torch only (no torchvision).

The pipeline is the one open_clip, timm and ``transformers`` image processors apply at evaluation time:
convert to RGB → resize (shortest side, or both sides) → centre crop → scale to [0, 1] → normalise. The
resize is PIL's own, which is also what torchvision and ``transformers`` call on PIL images, so pixels match
theirs exactly; the crop offset rounds as torchvision does.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.files import read_json

if TYPE_CHECKING:
    from PIL.Image import Image

    from vit_sae_hooks.model import HookedViT

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

Interpolation = Literal["bicubic", "bilinear", "nearest", "lanczos", "box", "hamming"]
ResizeMode = Literal["shortest", "squash"]

# transformers stores PIL's resampling enum as an int in preprocessor_config.json.
_PIL_RESAMPLE_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_PIL_RESAMPLE_NAMES = {name: code for code, name in _PIL_RESAMPLE_CODES.items()}


def _pil():
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("reading image files needs Pillow: pip install pillow") from error
    return Image


@dataclass(frozen=True)
class Preprocess:
    """Turns a PIL image into the normalised ``[3, height, width]`` tensor a ViT checkpoint expects.

    ``resize_mode="shortest"`` resizes the shorter side to ``resize_size`` (default: the crop size) keeping
    the aspect ratio, then centre-crops ``image_size``; ``"squash"`` resizes straight to ``image_size``
    (HF ViT and SigLIP processors). Call it on a PIL image, or use it as an :class:`ImageFolder` transform.

    Example:
        >>> pixels = Preprocess(224, CLIP_MEAN, CLIP_STD)(PIL.Image.open("cat.jpg"))  # [3, 224, 224]
    """

    image_size: int | tuple[int, int]
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    resize_size: int | None = None
    interpolation: Interpolation = "bicubic"
    resize_mode: ResizeMode = "shortest"

    def __post_init__(self) -> None:
        size = self.image_size
        size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(size) != 2 or min(size) <= 0:
            raise ConfigError(f"image_size must be a positive int or (height, width), got {self.image_size!r}")
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean and std need three values (std > 0), got mean={self.mean} std={self.std}")
        if self.interpolation not in _PIL_RESAMPLE_CODES.values():
            raise ConfigError(
                f"interpolation={self.interpolation!r} is not supported; choose one of {sorted(_PIL_RESAMPLE_CODES.values())}"
            )
        if self.resize_mode not in ("shortest", "squash"):
            raise ConfigError(f"resize_mode={self.resize_mode!r} is not supported; choose 'shortest' or 'squash'")

    def __call__(self, image: Image) -> Float[Tensor, "3 height width"]:
        Image = _pil()
        resample = getattr(Image.Resampling, self.interpolation.upper())
        image = image.convert("RGB")
        height, width = self.image_size
        if self.resize_mode == "squash":
            image = image.resize((width, height), resample=resample)
        else:
            image = image.resize(self.resized_size(image.width, image.height), resample=resample)
            image = center_crop(image, height, width)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std

    def save(self, folder: str | os.PathLike) -> Path:
        """Write this preprocessing as the ``preprocessor_config.json`` of a checkpoint folder, in the
        transformers image-processor format that :func:`preprocess_from_folder` (and so :func:`preprocess_for`)
        reads back.

        Example:
            >>> Preprocess(32, (0.5,) * 3, (0.25,) * 3, resize_mode="squash").save("my_model")
        """
        height, width = self.image_size
        config: dict[str, Any] = {
            "do_convert_rgb": True, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": list(self.mean), "image_std": list(self.std),
            "resample": _PIL_RESAMPLE_NAMES[self.interpolation],
        }
        if self.resize_mode == "squash":
            config.update(image_processor_type="ViTImageProcessor", size={"height": height, "width": width},
                          do_center_crop=False)
        else:
            config.update(image_processor_type="CLIPImageProcessor", do_center_crop=True,
                          size={"shortest_edge": self.resize_size or min(self.image_size)},
                          crop_size={"height": height, "width": width})
        path = Path(folder) / "preprocessor_config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2) + "\n")
        return path

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) after the shortest-side resize, truncated as torchvision and transformers do."""
        target = self.resize_size or min(self.image_size)
        if width <= height:
            return target, int(target * height / width)
        return int(target * width / height), target


def center_crop(image: Image, height: int, width: int) -> Image:
    """The central ``height x width`` region of ``image``, zero-padded first if the image is smaller.

    Example:
        >>> center_crop(PIL.Image.new("RGB", (300, 224)), 224, 224).size
        (224, 224)
    """
    Image = _pil()
    if image.width < width or image.height < height:
        padded = Image.new(image.mode, (max(width, image.width), max(height, image.height)))
        padded.paste(image, ((padded.width - image.width) // 2, (padded.height - image.height) // 2))
        image = padded
    # torchvision rounds the offset (round-half-even); the crop is what open_clip and timm apply.
    top = round((image.height - height) / 2.0)
    left = round((image.width - width) / 2.0)
    return image.crop((left, top, left + width, top + height))


def _architecture_defaults(architecture: str) -> tuple[tuple[float, ...], tuple[float, ...], ResizeMode, Interpolation]:
    """Mean, std, resize mode and interpolation of a model family when its checkpoint names none."""
    name = architecture.lower()
    if "siglip" in name:
        return HALF, HALF, "squash", "bicubic"
    if "clip" in name:
        return CLIP_MEAN, CLIP_STD, "shortest", "bicubic"
    return IMAGENET_MEAN, IMAGENET_STD, "shortest", "bicubic"


def _from_hf_processor(config: dict, fallback_size: tuple[int, int], architecture: str) -> Preprocess:
    mean, std, _, interpolation = _architecture_defaults(architecture)
    size = config.get("size", fallback_size[0])
    crop = config.get("crop_size") if config.get("do_center_crop", "crop_size" in config) else None
    interpolation = _PIL_RESAMPLE_CODES.get(config.get("resample", -1), interpolation)
    kwargs: dict[str, Any] = dict(
        mean=tuple(config.get("image_mean", mean)), std=tuple(config.get("image_std", std)), interpolation=interpolation
    )
    if isinstance(size, dict) and "shortest_edge" in size:
        shortest = int(size["shortest_edge"])
        crop_size = _size_pair(crop) if crop is not None else (shortest, shortest)
        return Preprocess(crop_size, resize_size=shortest, resize_mode="shortest", **kwargs)
    target = _size_pair(size)
    if crop is not None and _size_pair(crop) != target:
        return Preprocess(_size_pair(crop), resize_size=min(target), resize_mode="shortest", **kwargs)
    return Preprocess(target, resize_mode="squash", **kwargs)


def _size_pair(size: Any) -> tuple[int, int]:
    if isinstance(size, dict):
        return int(size["height"]), int(size["width"])
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


def _from_open_clip(config: dict, image_size: tuple[int, int]) -> Preprocess:
    cfg = config.get("preprocess_cfg") or {}
    vision = (config.get("model_cfg") or config).get("vision_cfg") or {}
    size = _size_pair(cfg.get("size", vision.get("image_size", image_size)))
    resize_mode = cfg.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash"):
        raise ConfigError(
            f"open_clip resize_mode={resize_mode!r} is not supported; supported: 'shortest', 'squash'. "
            "Build Preprocess(...) yourself for this checkpoint."
        )
    return Preprocess(
        size, mean=tuple(cfg.get("mean", CLIP_MEAN)), std=tuple(cfg.get("std", CLIP_STD)),
        interpolation=cfg.get("interpolation", "bicubic"), resize_mode=resize_mode,
    )


def _from_timm(pretrained_cfg: dict) -> Preprocess:
    size = _size_pair(pretrained_cfg.get("input_size", (3, 224, 224))[1:])
    # timm resizes the shorter side to size / crop_pct before the centre crop.
    crop_pct = float(pretrained_cfg.get("crop_pct", 1.0) or 1.0)
    return Preprocess(
        size, mean=tuple(pretrained_cfg.get("mean", IMAGENET_MEAN)), std=tuple(pretrained_cfg.get("std", IMAGENET_STD)),
        resize_size=math.floor(min(size) / crop_pct), interpolation=pretrained_cfg.get("interpolation", "bicubic"),
    )


def _read_json(path: Path) -> dict:
    return read_json(path, ConfigError, fix="fix or delete the file.")


def preprocess_from_folder(folder: str | os.PathLike, image_size: tuple[int, int] | None = None) -> Preprocess:
    """The preprocessing a checkpoint folder declares (``preprocessor_config.json``, open_clip's ``preprocess_cfg``
    or timm's ``pretrained_cfg``), with the model family's defaults for anything it leaves out.

    Example:
        >>> preprocess_from_folder("checkpoints/clip-vit-b-32").image_size
        (224, 224)
    """
    folder = Path(folder)
    config = _read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    vision = config.get("vision_config", config)
    architecture = str(config.get("model_type") or (config.get("architectures") or [""])[0])
    native = folder / "hooked_vit_config.json"
    if native.exists():
        native_cfg = _read_json(native)
        architecture = native_cfg.get("original_architecture", architecture)
        image_size = image_size or _size_pair(native_cfg.get("image_size", 224))
    image_size = image_size or _size_pair(vision.get("image_size", 224))
    if (folder / "preprocessor_config.json").exists():
        return _from_hf_processor(_read_json(folder / "preprocessor_config.json"), image_size, architecture)
    if (folder / "open_clip_config.json").exists():
        return _from_open_clip(_read_json(folder / "open_clip_config.json"), image_size)
    if "pretrained_cfg" in config:
        return _from_timm(config["pretrained_cfg"])
    mean, std, resize_mode, interpolation = _architecture_defaults(architecture)
    return Preprocess(image_size, mean, std, interpolation=interpolation, resize_mode=resize_mode)


def _cached_config_folder(hub_id: str) -> Path | None:
    """The hub-cache folder holding ``hub_id``'s preprocessing config, looked up without any network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for filename in ("preprocessor_config.json", "open_clip_config.json", "config.json"):
        try:
            found = try_to_load_from_cache(hub_id, filename)
        except Exception:
            return None
        if isinstance(found, str):
            return Path(found).parent
    return None


def preprocess_for(model_or_source: HookedViT | str | os.PathLike) -> Preprocess:
    """The preprocessing for a model: from a checkpoint folder or hub id (its config files), or from a loaded
    :class:`~vit_sae_hooks.HookedViT` (its source folder if known, else its family's defaults at its image size).

    A hub id is read from the Hugging Face cache or downloaded (config files only).

    Example:
        >>> preprocess = preprocess_for("laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K")
    """
    if isinstance(model_or_source, (str, os.PathLike)):
        from vit_sae_hooks.hub import resolve_local_or_hub

        return preprocess_from_folder(resolve_local_or_hub(model_or_source, ["*.json"]))
    cfg = getattr(model_or_source, "cfg", None)
    if cfg is None or not hasattr(cfg, "image_size"):
        raise ConfigError(
            f"preprocess_for needs a HookedViT, a checkpoint folder or a hub id, got {type(model_or_source).__name__}"
        )
    from vit_sae_hooks.hub import builtin_folder

    image_size = tuple(cfg.image_size)
    source = Path(str(cfg.model_name)).expanduser()
    if source.is_dir():
        folder = source
    else:
        folder = builtin_folder(cfg.model_name) or _cached_config_folder(str(cfg.model_name))
    if folder is not None:
        found = preprocess_from_folder(folder, image_size)
        if found.image_size == image_size:
            return found
    mean, std, resize_mode, interpolation = _architecture_defaults(cfg.original_architecture)
    return Preprocess(image_size, mean, std, interpolation=interpolation, resize_mode=resize_mode)
