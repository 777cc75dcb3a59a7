"""``build_site``: a static feature browser for any HookedViT and SAE over a set of images."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from vit_sae_hooks.data.batches import image_batches
from vit_sae_hooks.data.folder import UNLABELLED
from vit_sae_hooks.data.preprocess import preprocess_for
from vit_sae_hooks.errors import ConfigError, DataError, HookNameError, InputShapeError
from vit_sae_hooks.evals.dictionary import nearest_directions
from vit_sae_hooks.viz.figures import Unnormalize, displayable_image
from vit_sae_hooks.viz.heatmap import feature_ids
from vit_sae_hooks.viz.site import files
from vit_sae_hooks.viz.site.stats import (
    BINS_PER_OCTAVE,
    KINDS,
    LOWEST_OCTAVE,
    MAP_LEVELS,
    FeatureStats,
    SparseActivations,
    TokenRows,
    hook_rows,
    sparse_activations,
    strongest_per_row,
)
from vit_sae_hooks.viz.top_activating import model_device, streamed_batches

if TYPE_CHECKING:
    from vit_sae_hooks.model import HookedViT
    from vit_sae_hooks.sae import SAE

FeatureChoice = str | int | Sequence[int] | Tensor | None
# Thumbnails up to this side are PNG (small images, exact pixels); larger ones JPEG (a tenth of the size).
PNG_UP_TO = 64
TEXT_LABELS_SHOWN = 5


@dataclass
class Site:
    """A feature browser written by :func:`build_site`: where it is and what it covers.

    Example:
        >>> site = build_site(model, sae, "imagenet/val", "site", limit=5000)
        >>> site.url
        'file:///home/me/site/index.html'
    """

    folder: Path
    n_images: int
    n_features: int
    n_dead: int

    @property
    def index(self) -> Path:
        """The page to open."""
        return self.folder / "index.html"

    @property
    def url(self) -> str:
        """The page as a ``file://`` URL."""
        return self.index.resolve().as_uri()


def build_site(
    model: HookedViT,
    sae: SAE,
    images: Tensor | DataLoader | Dataset | Iterable | str | os.PathLike,
    out_dir: str | os.PathLike,
    top: int = 16,
    features: FeatureChoice = None,
    limit: int | None = None,
    labels: Int[Tensor, " n_images"] | None = None,
    class_names: Sequence[str] | None = None,
    text_labels: Sequence[str] | nn.Module | None = None,
    text_model: str | os.PathLike | None = None,
    templates: str | Sequence[str] = "photo",
    unnormalize: Unnormalize = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    per_token: int = 16,
    similar: int = 8,
    sae_name: str | None = None,
    progress: bool = True,
) -> Site:
    """Write a static feature browser for ``sae`` over ``images`` into ``out_dir`` (open ``out_dir/index.html``).

    One streamed pass over the images (model up to the SAE's hook, then the SAE) gathers, for every feature,
    how often it fires (on images and on tokens), its max activation, activation histogram and CLS-versus-patch
    activity, and its ``top`` images with their patch maps; each image's thumbnail and strongest features per
    token are written as the pass goes. Memory grows with the number of features, not of images.

    The page has an index of all features (sortable, searchable, with a density histogram; dead features
    apart), a view per feature (``index.html#feature=N``) and per image (``#image=I``, ``&token=T`` for one
    token). Everything loads from ``file://``: no server, no network.

    Args:
        images: an image folder (class subfolders give classes), a tensor of preprocessed images (with
            ``labels`` and ``class_names``), a dataset or a loader, as for :func:`top_activating`.
        out_dir: a new or empty folder, or an earlier site (replaced atomically once the new one is complete).
        features: None or ``"all"``, a number ``N`` (features ``0..N-1``) or a list of feature ids.
        text_labels: label texts to match features against with a zero-shot head built from ``text_model``'s
            text tower (default: the model's own checkpoint; CLIP), or a ready head (``ZeroShotHead``).
        templates: prompt templates for ``text_labels`` (a template set name or strings with ``{}``).
        unnormalize: how to undo the images' normalisation for thumbnails (default: the model's preprocessing).
        per_token: features listed per token in the image view (strongest first).
        similar: features with the most similar decoder directions listed per feature.
        sae_name: the SAE's name in the page's title (e.g. its hub id).

    Example:
        >>> site = build_site(model, sae, "imagenet/val", "site", limit=5000, text_labels=["dog", "cat", "car"])
    """
    out = Path(out_dir).expanduser()
    rows = _checked_rows(model, sae)
    shown = _chosen_features(features, sae)
    for name, value, least in (("top", top, 1), ("per_token", per_token, 1), ("similar", similar, 0),
                               ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name}={value!r} must be a whole number >= {least}")
    device, _ = model_device(model, sae)
    files.check_out_dir(out)
    head = _label_head(model, text_labels, text_model, templates, device, progress)
    batches, total, dataset = image_batches(model, images, labels, batch_size, limit, num_workers)
    name_of = _image_names(images, dataset)
    class_names = list(class_names or getattr(dataset, "classes", None) or []) or None
    if unnormalize is None:
        # An image folder's own preprocessing, else the model's (what image_batches used for a folder path).
        transform = getattr(dataset, "transform", None)
        unnormalize = transform if hasattr(transform, "std") else preprocess_for(model)
    tracked = torch.full((sae.d_sae,), -1, dtype=torch.long)
    tracked[shown] = torch.arange(shown.numel())
    stats = FeatureStats(shown.numel(), top, rows, n_labels=0 if head is None else len(head.class_names))
    with files.staged_site(out) as folder:
        writer = _ImageWriter(folder, unnormalize, shown, per_token, name_of, tubelet=model.cfg.tubelet_size)
        _stream(model, sae, rows, batches, limit, total, tracked, stats, writer, head, progress)
        writer.close()
        n_dead = _write_features(folder, sae, shown, stats, writer, class_names, head, similar)
        description = dict(model=str(model.cfg.model_name), sae=sae_name or f"{sae.cfg.architecture} SAE",
                           hook=str(sae.hook_name), token_set=sae.token_set, n_images=stats.n_images,
                           n_features=int(shown.numel()), n_dead=n_dead)
        _write_meta(folder, model, rows, shown, stats, writer, class_names, head, description, top)
        files.copy_static(folder)
        files.write_marker(folder, description)
    return Site(out, stats.n_images, int(shown.numel()), n_dead)


def _checked_rows(model: HookedViT, sae: SAE) -> TokenRows:
    if sae.hook_name is None:
        raise ConfigError("this SAE records no hook_name, so the browser cannot tell where to read it; set sae.cfg.hook_name")
    if model.acts_to_saes:
        raise ConfigError(
            f"the model has SAEs attached at {sorted(model.acts_to_saes)}; the browser reads the model's own "
            "activations, so call model.reset_saes() first"
        )
    try:
        model.check_hook_name(sae.hook_name)
        return TokenRows.of(model, sae)
    except (HookNameError, InputShapeError) as error:
        raise type(error)(
            f"the SAE reads {sae.hook_name!r}, which does not fit model {model.cfg.model_name!r} ({error}); "
            "use an SAE trained on this model"
        ) from error


def _chosen_features(features: FeatureChoice, sae: SAE) -> Int[Tensor, " n_shown"]:
    if features is None or (isinstance(features, str) and features == "all"):
        return torch.arange(sae.d_sae)
    if isinstance(features, int) and not isinstance(features, bool):
        if not 1 <= features <= sae.d_sae:
            raise ConfigError(f"features={features} must be between 1 and the SAE's {sae.d_sae} features (or 'all')")
        return torch.arange(features)
    if isinstance(features, str):
        raise ConfigError(f"features={features!r} must be 'all', a number of features or a list of feature ids")
    return feature_ids(features, sae).sort().values


def _label_head(
    model: HookedViT, text_labels: Sequence[str] | nn.Module | None, text_model: str | os.PathLike | None,
    templates: str | Sequence[str], device: torch.device, progress: bool,
) -> nn.Module | None:
    from vit_sae_hooks.evals.heads import build_zero_shot_head, head_for

    if text_labels is None:
        return None
    if isinstance(text_labels, nn.Module):
        head = text_labels
    else:
        if isinstance(text_labels, str) or not text_labels:
            raise ConfigError(f"text_labels must be a list of label texts (or a zero-shot head), got {text_labels!r}")
        source = text_model or model.cfg.model_name
        head = build_zero_shot_head(source, list(text_labels), templates=templates, device=device, progress=progress)
    if not getattr(head, "class_names", None):
        raise ConfigError("the label head has no class_names; build it with build_zero_shot_head(..., class_names)")
    return head_for(model, head).to(device)


def _image_names(images: Any, dataset: Any) -> Callable[[int], str]:
    """Each image's name: its path under the folder when the data is an image folder read in order."""
    samples = getattr(dataset, "samples", None)
    in_order = not isinstance(images, DataLoader) or isinstance(images.sampler, SequentialSampler)
    if samples is None or not in_order:
        return lambda index: f"image {index}"
    root = getattr(dataset, "root", None)

    def name(index: int) -> str:
        path = Path(samples[index][0])
        return path.relative_to(root).as_posix() if root is not None else path.name

    return name


def _stream(
    model: HookedViT, sae: SAE, rows: TokenRows, batches: Iterable, limit: int | None, total: int | None,
    tracked: Tensor, stats: FeatureStats, writer: _ImageWriter, head: nn.Module | None, progress: bool,
) -> None:
    device, dtype = model_device(model, sae)
    for images, batch_labels in streamed_batches(batches, limit, total, f"feature browser {sae.hook_name}", progress):
        model.check_images(images)
        x, output = hook_rows(model, sae, rows, images.to(device, dtype), head is not None)
        acts = sparse_activations(sae, x, tracked)
        first = stats.n_images
        stats.update(acts, first, None if head is None else head(output))
        writer.add(images, batch_labels, acts, first)
    if stats.n_images == 0:
        raise DataError("the data yielded no images; check the folder, dataset, loader or limit")


class _ImageWriter:
    """Writes each image's thumbnail and its image-view record as the pass goes, one shard at a time."""

    def __init__(
        self, folder: Path, unnormalize: Unnormalize, shown: Tensor, per_token: int, name_of: Callable[[int], str],
        tubelet: int = 1,
    ):
        self.folder, self.unnormalize, self.shown, self.per_token, self.name_of = folder, unnormalize, shown, per_token, name_of
        # Video clips are shown as a filmstrip: the first frame of each tubelet, side by side.
        self.tubelet = tubelet
        (folder / "thumbs").mkdir()
        self.labels: list[int] = []
        self.pending: list[dict[str, Any]] = []
        self.written = 0
        self.extension: str | None = None
        self.thumb_size: tuple[int, int] | None = None

    def add(self, images: Tensor, labels: Tensor | None, acts: SparseActivations, first: int) -> None:
        from PIL import Image

        batch = images.shape[0]
        if images.ndim == 5:
            # [batch, frames, C, H, W] -> [batch, C, H, time positions * W]
            time_positions = images.shape[1] // self.tubelet
            images = images[:, : time_positions * self.tubelet : self.tubelet].permute(0, 2, 3, 1, 4).flatten(-2)
        if self.extension is None:
            self.thumb_size = (int(images.shape[-2]), int(images.shape[-1]))
            self.extension = "png" if max(self.thumb_size) <= PNG_UP_TO else "jpg"
        labels = [UNLABELLED] * batch if labels is None else [int(label) for label in labels]
        for offset, (image, tokens) in enumerate(zip(images, strongest_per_row(acts, self.shown, self.per_token), strict=True)):
            index = first + offset
            pixels = (displayable_image(image, self.unnormalize) * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(self.folder / "thumbs" / f"{index}.{self.extension}", quality=90)
            self.pending.append({"name": self.name_of(index), "label": labels[offset], "tokens": tokens})
            if len(self.pending) == files.IMAGES_PER_SHARD:
                self._flush()
        self.labels += labels

    def _flush(self) -> None:
        if self.pending:
            shard = self.written // files.IMAGES_PER_SHARD
            files.write_data(self.folder, files.shard_key("images", shard), {"first": self.written, "images": self.pending})
            self.written += len(self.pending)
            self.pending = []

    def close(self) -> None:
        """Write the last, partly filled shard."""
        self._flush()


def _write_features(
    folder: Path, sae: SAE, shown: Tensor, stats: FeatureStats, writer: _ImageWriter, class_names: list[str] | None,
    head: nn.Module | None, n_similar: int,
) -> int:
    """Write the feature shards and the index's summary; return how many shown features never fired."""
    ids = shown.tolist()
    image_frequency = (stats.image_fires.double() / stats.n_images).tolist()
    token_frequency = (stats.token_fires.double() / (stats.n_images * stats.rows.kinds.numel())).tolist()
    max_activation = stats.max_activation.tolist()
    labels, text_labels = _feature_labels(stats, head, class_names, writer.labels)
    neighbours = _neighbours(sae.W_dec[shown], ids, n_similar)
    top_images, top_scores = stats.top_images.tolist(), stats.top_scores.tolist()
    codes = np.frombuffer(files.MAP_ALPHABET.encode(), dtype=np.uint8)[stats.top_maps().numpy()]
    kinds_read = sorted(set(stats.rows.kinds.tolist()))
    kind_fires, kind_sums = stats.kind_fires.tolist(), stats.kind_sums.tolist()
    histogram = stats.histogram.numpy()
    for start in range(0, len(ids), files.FEATURES_PER_SHARD):
        records, referenced = [], {}
        for position in range(start, min(start + files.FEATURES_PER_SHARD, len(ids))):
            kept = [slot for slot, image in enumerate(top_images[position]) if image >= 0]
            images = [top_images[position][slot] for slot in kept]
            bins = histogram[position].nonzero()[0]
            records.append({
                "id": ids[position], "label": labels[position], "image_frequency": _rounded(image_frequency[position]),
                "token_frequency": _rounded(token_frequency[position]), "max": _rounded(max_activation[position]),
                "images": images, "scores": [_rounded(top_scores[position][slot]) for slot in kept],
                "maps": [codes[position, slot].tobytes().decode() for slot in kept] if codes.shape[2] else [],
                # Only the bins from the first to the last non-empty one, after the index of the first.
                "histogram": [int(bins[0]), histogram[position, bins[0] : bins[-1] + 1].tolist()] if bins.size else None,
                "kinds": {KINDS[kind]: [kind_fires[position][kind], _rounded(kind_sums[position][kind])] for kind in kinds_read},
                "text_labels": text_labels[position], "similar": neighbours[position],
            })
            referenced.update({image: [writer.name_of(image), writer.labels[image]] for image in images})
        files.write_data(folder, files.shard_key("features", start // files.FEATURES_PER_SHARD),
                         {"first": start, "features": records, "images": referenced})
    label_names = list(dict.fromkeys(labels))
    label_index = {name: index for index, name in enumerate(label_names)}
    files.write_data(folder, "summary", {
        "image_frequency": [_rounded(value) for value in image_frequency],
        "token_frequency": [_rounded(value) for value in token_frequency],
        "max": [_rounded(value) for value in max_activation],
        "label": [label_index[label] for label in labels], "label_names": label_names,
    })
    return int((stats.image_fires == 0).sum())


def _feature_labels(
    stats: FeatureStats, head: nn.Module | None, class_names: list[str] | None, image_labels: list[int]
) -> tuple[list[str], list[list[list[Any]]]]:
    """Each feature's label and its best text labels with their scores: with a label head, its best-scoring
    labels; otherwise the most common class among its top images (or "")."""
    n_features = stats.n_features
    scores = stats.label_scores()
    if scores is not None:
        names = list(head.class_names)
        best = scores.nan_to_num(-float("inf")).topk(min(TEXT_LABELS_SHOWN, len(names)), dim=1)
        text_labels = [
            [[names[i], _rounded(score)] for i, score in zip(indices, values, strict=True)] if fired else []
            for indices, values, fired in zip(best.indices.tolist(), best.values.tolist(), (stats.image_fires > 0).tolist(),
                                              strict=True)
        ]
        return [pairs[0][0] if pairs else "" for pairs in text_labels], text_labels
    labels = []
    for images in stats.top_images.tolist():
        counts = Counter(image_labels[image] for image in images if image >= 0 and image_labels[image] >= 0)
        labels.append(class_names[counts.most_common(1)[0][0]] if class_names and counts else "")
    return labels, [[] for _ in range(n_features)]


def _neighbours(decoder: Tensor, ids: list[int], n_similar: int) -> list[list[list[Any]]]:
    """For each feature, ``[id, cosine]`` of the ``n_similar`` shown features with the most similar decoder direction."""
    if n_similar == 0 or len(ids) < 2:
        return [[] for _ in ids]
    positions, cosines = nearest_directions(decoder, n=n_similar)
    return [[[ids[p], _rounded(c)] for p, c in zip(ps, cs, strict=True)]
            for ps, cs in zip(positions.tolist(), cosines.tolist(), strict=True)]


def _write_meta(
    folder: Path, model: HookedViT, rows: TokenRows, shown: Tensor, stats: FeatureStats, writer: _ImageWriter,
    class_names: list[str] | None, head: nn.Module | None, description: dict[str, Any], top: int,
) -> None:
    patch_height, patch_width = model.cfg.patch_size
    thumb_height, thumb_width = writer.thumb_size
    ids_are_positions = bool((shown == torch.arange(shown.numel())).all())
    files.write_data(folder, "meta", {
        **description,
        # The shown feature ids, or None when they are 0..n-1 (every feature, or the first n).
        "features": None if ids_are_positions else shown.tolist(),
        "top": top,
        "features_per_shard": files.FEATURES_PER_SHARD, "images_per_shard": files.IMAGES_PER_SHARD,
        "rows": {"positions": rows.positions.tolist(), "kinds": [KINDS[kind] for kind in rows.kinds.tolist()],
                 "patches": rows.patches.tolist()},
        "grid": [thumb_height // patch_height, thumb_width // patch_width] if rows.n_patches else None,
        "thumb": {"extension": writer.extension, "height": thumb_height, "width": thumb_width},
        "classes": class_names,
        "text_labels": list(head.class_names) if head is not None else None,
        "histogram": {"bins_per_octave": BINS_PER_OCTAVE, "lowest_octave": LOWEST_OCTAVE},
        "map": {"alphabet": files.MAP_ALPHABET, "levels": MAP_LEVELS},
    })


def _rounded(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits, so the data files stay short."""
    return float(f"{value:.{digits}g}")
