"""Classifier heads that turn a HookedViT's output into class logits: the model's own, or zero-shot.

A zero-shot head is built once from an image-text checkpoint's text tower (CLIP, SigLIP, SigLIP 2, MetaCLIP 2;
class names × prompt templates), saved as safetensors, and loaded later without the text tower.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from vit_sae_hooks.errors import CheckpointFormatError, ConfigError

logger = logging.getLogger(__name__)

HEAD_FORMAT = "vit_sae_hooks.zero_shot_head"


class ModelHead(nn.Module):
    """The model's own classifier: its output already is the class logits (ViTForImageClassification, timm).

    Example:
        >>> head = ModelHead(n_classes=model.cfg.d_out)
    """

    def __init__(self, n_classes: int, class_names: Sequence[str] | None = None):
        super().__init__()
        self.n_classes = n_classes
        self.d_input = n_classes
        self.class_names = list(class_names) if class_names is not None else None

    def forward(self, output: Float[Tensor, "batch n_classes"]) -> Float[Tensor, "batch n_classes"]:
        return output


class ZeroShotHead(nn.Module):
    """CLIP zero-shot classifier: ``logits = normalise(image_embedding) · text_embeddingsᵀ`` (· logit scale if on).

    ``text_embeddings`` are unit-norm class embeddings ``[n_classes, d_embed]``. The logit scale is off by
    default, as in the Prisma tables (cross-entropies near ln(n_classes)); ``use_logit_scale=True`` multiplies
    by the checkpoint's learned scale (100 for OpenAI CLIP), the temperature CLIP was trained with.

    Example:
        >>> head = ZeroShotHead.load("imagenet_zero_shot.safetensors"); logits = head(model(images))
    """

    text_embeddings: Float[Tensor, "n_classes d_embed"]

    def __init__(
        self,
        text_embeddings: Float[Tensor, "n_classes d_embed"],
        class_names: Sequence[str] | None = None,
        logit_scale: float = 1.0,
        use_logit_scale: bool = False,
        metadata: dict | None = None,
    ):
        super().__init__()
        if text_embeddings.ndim != 2:
            raise ConfigError(f"text_embeddings must be [n_classes, d_embed], got shape {tuple(text_embeddings.shape)}")
        if class_names is not None and len(class_names) != text_embeddings.shape[0]:
            raise ConfigError(
                f"{len(class_names)} class names for {text_embeddings.shape[0]} text embeddings; pass one name per row"
            )
        self.register_buffer("text_embeddings", F.normalize(text_embeddings.float(), dim=-1))
        self.class_names = list(class_names) if class_names is not None else None
        self.logit_scale = float(logit_scale)
        self.use_logit_scale = use_logit_scale
        self.metadata = dict(metadata or {})

    @property
    def n_classes(self) -> int:
        """Number of classes (rows of the text embeddings)."""
        return self.text_embeddings.shape[0]

    @property
    def d_input(self) -> int:
        """Width of the image embedding the head expects."""
        return self.text_embeddings.shape[1]

    def forward(self, image_embeddings: Float[Tensor, "batch d_embed"]) -> Float[Tensor, "batch n_classes"]:
        """Class logits of a batch of image embeddings (the model's ``hook_output``)."""
        text = self.text_embeddings.to(image_embeddings.dtype)
        logits = F.normalize(image_embeddings, dim=-1) @ text.T
        return logits * self.logit_scale if self.use_logit_scale else logits

    def save(self, path: str | os.PathLike) -> Path:
        """Write the head to one safetensors file (embeddings, class names, logit scale, provenance).

        Example:
            >>> head.save("imagenet_zero_shot.safetensors")
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": HEAD_FORMAT,
            "class_names": json.dumps(self.class_names),
            "logit_scale": repr(self.logit_scale),
            **{key: json.dumps(value) for key, value in self.metadata.items()},
        }
        save_file({"text_embeddings": self.text_embeddings.detach().cpu().contiguous()}, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, use_logit_scale: bool = False) -> ZeroShotHead:
        """A head written by :meth:`save`; no text tower is needed.

        Example:
            >>> head = ZeroShotHead.load("imagenet_zero_shot.safetensors", use_logit_scale=True)
        """
        from safetensors import safe_open

        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"zero-shot head file {str(path)!r} does not exist; build one with "
                "build_zero_shot_head(clip_model_id).save(path) or `vit-sae eval --build-head`"
            )
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                embeddings = handle.get_tensor("text_embeddings")
        except Exception as error:
            raise CheckpointFormatError(
                f"{str(path)!r} is not a zero-shot head file ({type(error).__name__}: {error}); expected a safetensors "
                "file with a 'text_embeddings' tensor written by ZeroShotHead.save"
            ) from error
        if metadata.get("format") != HEAD_FORMAT:
            raise CheckpointFormatError(
                f"{str(path)!r} has format {metadata.get('format')!r}, not {HEAD_FORMAT!r}; write heads with ZeroShotHead.save"
            )
        extra = {k: json.loads(v) for k, v in metadata.items() if k not in ("format", "class_names", "logit_scale")}
        return cls(
            embeddings, json.loads(metadata["class_names"]), float(metadata["logit_scale"]), use_logit_scale, extra
        )


# Text towers trained with sigmoid losses on prompts padded to their full length: their text embedding is
# read at the last position, so prompts must be padded the same way (as transformers' own pipeline does).
PAD_TO_MAX_LENGTH = ("siglip", "siglip2")


def build_zero_shot_head(
    clip_model: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    templates: str | Sequence[str] = "openai",
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    progress: bool = True,
) -> ZeroShotHead:
    """A zero-shot head from the text tower of a HF image-text checkpoint (a hub id or a local folder): CLIP,
    SigLIP, SigLIP 2, MetaCLIP 2, or any model with ``get_text_features`` and a ``logit_scale``.

    Each class embedding is the mean of its unit-norm prompt embeddings (one per template), renormalised, as
    in OpenAI's zero-shot ImageNet evaluation. ``class_names`` default to the 1000 shipped ImageNet names;
    ``templates`` is a template set name (see :func:`~vit_sae_hooks.data.imagenet.imagenet_templates`) or a
    list of strings with ``{}``. SigLIP prompts are padded to the text tower's length, as SigLIP was trained;
    its ``logit_bias`` is kept in the head's metadata (a bias shared by all classes changes no softmax).

    Example:
        >>> head = build_zero_shot_head("openai/clip-vit-base-patch32", templates="simple")
        >>> head.save("imagenet_zero_shot.safetensors")
    """
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from vit_sae_hooks.data.imagenet import imagenet_class_names, imagenet_templates
    from vit_sae_hooks.hub import resolve_local_or_hub

    class_names = list(class_names) if class_names is not None else imagenet_class_names()
    templates = imagenet_templates(templates) if isinstance(templates, str) else list(templates)
    bad = [t for t in templates if "{}" not in t]
    if bad or not templates or not class_names:
        raise ConfigError(
            f"need at least one class name and templates each containing '{{}}'; got {len(class_names)} names and "
            f"templates without '{{}}': {bad[:3]}"
        )
    folder = resolve_local_or_hub(
        clip_model, ["*.json", "*.txt", "*.model", "model.safetensors", "tokenizer*", "vocab*", "merges*", "spiece*"]
    )
    def no_text_tower(what: str) -> CheckpointFormatError:
        return CheckpointFormatError(
            f"{str(clip_model)!r} is {what}, which has no text tower to embed class names; pass the full image-text "
            "checkpoint (e.g. CLIPModel or SiglipModel, not the vision model alone)"
        )

    def not_image_text(error: Exception) -> CheckpointFormatError:
        reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        return CheckpointFormatError(
            f"{str(clip_model)!r} is not a transformers image-text checkpoint with a tokenizer ({reason}); pass the hub "
            "id or folder of a HF CLIP, SigLIP, SigLIP 2 or MetaCLIP 2 model (config.json, model.safetensors, tokenizer "
            "files)"
        )

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise not_image_text(error) from error
    if getattr(config, "text_config", None) is None:
        raise no_text_tower(f"a {type(config).__name__} (model_type {config.model_type!r})")
    try:
        model = AutoModel.from_pretrained(folder).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise not_image_text(error) from error
    if not hasattr(model, "get_text_features") or not hasattr(model, "logit_scale"):
        raise no_text_tower(f"a {type(model).__name__}")
    model_type = config.model_type
    prompts = [template.format(name) for name in class_names for template in templates]
    # Tokenizers saved without model_max_length would not truncate to what the text tower can read.
    max_length = model.config.text_config.max_position_embeddings
    padding = "max_length" if model_type in PAD_TO_MAX_LENGTH else True
    embeddings = []
    with torch.inference_mode():
        logit_scale = float(model.logit_scale.exp())
        for start in tqdm(range(0, len(prompts), batch_size), desc="text embeddings", disable=not progress):
            tokens = tokenizer(
                prompts[start : start + batch_size], padding=padding, truncation=True, max_length=max_length,
                return_tensors="pt",
            )
            features = model.get_text_features(**tokens.to(device))
            # transformers 5 returns a model output whose pooler_output holds the projected features.
            features = features if isinstance(features, Tensor) else features.pooler_output
            embeddings.append(F.normalize(features.float(), dim=-1).cpu())
    per_prompt = torch.cat(embeddings).view(len(class_names), len(templates), -1)
    class_embeddings = F.normalize(per_prompt.mean(1), dim=-1)
    logger.info("built a %d-class zero-shot head from %s with %d templates", len(class_names), clip_model, len(templates))
    metadata = {"source_model": str(clip_model), "templates": templates}
    if getattr(model, "logit_bias", None) is not None:
        metadata["logit_bias"] = float(model.logit_bias.detach())
    return ZeroShotHead(class_embeddings, class_names, logit_scale, metadata=metadata)


def head_for(model, head: str | os.PathLike | nn.Module | None, use_logit_scale: bool = False) -> nn.Module | None:
    """Resolve ``head``: None (the model's own head if it is a classifier, else none), ``"model"``, a
    ``zero-shot:FILE`` / ``FILE.safetensors`` path, or a module; check its width against the model's output.

    Example:
        >>> head = head_for(model, "zero-shot:imagenet_zero_shot.safetensors")
    """
    d_out = model.cfg.d_out
    if head is None:
        is_classifier = model.cfg.original_architecture.endswith("ForImageClassification")
        return ModelHead(d_out) if is_classifier else None
    if isinstance(head, (str, os.PathLike)):
        text = str(head)
        if text == "model":
            head = ModelHead(d_out)
        else:
            head = ZeroShotHead.load(text.removeprefix("zero-shot:"), use_logit_scale=use_logit_scale)
    elif isinstance(head, ZeroShotHead):
        head.use_logit_scale = head.use_logit_scale or use_logit_scale
    d_input = getattr(head, "d_input", None)
    if d_input is not None and d_input != d_out:
        raise ConfigError(
            f"the head reads {d_input}-wide embeddings but the model outputs {d_out} ({model.cfg.model_name}); "
            "build the zero-shot head from the same image-text checkpoint as the model"
        )
    return head
