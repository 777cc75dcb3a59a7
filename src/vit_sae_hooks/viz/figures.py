"""Matplotlib figures of SAE features: top-activating images with their patches highlighted, a per-patch
heatmap over one image, and a feature card combining them with the top images' label histogram.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot), so they need no display,
leave no global state behind and are freed like any object; ``path=`` saves a PNG of
``figure.get_size_inches() * dpi`` pixels (rounded down).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from vit_sae_hooks.checks import described_shape
from vit_sae_hooks.data.display import Unnormalize, displayable_image
from vit_sae_hooks.errors import ConfigError, InputShapeError
from vit_sae_hooks.tokens import TOKEN_SET_DESCRIPTIONS
from vit_sae_hooks.viz.top_activating import TopActivations

# A Preprocess (anything with .mean and .std), a (mean, std) pair, or None for per-image min-max scaling.

CELL_INCHES = 1.6
HIGHLIGHT = colormaps["inferno"]


def _overlay(ax: Axes, rgb: np.ndarray, patch_map: Tensor | None, vmax: float) -> None:
    """``rgb`` with each patch tinted in proportion to its activation (0 leaves the patch as it is)."""
    ax.imshow(rgb, interpolation="nearest")
    if patch_map is not None:
        strength = (patch_map.detach().double().clamp_min(0) / vmax).clamp(0, 1).numpy()
        tint = HIGHLIGHT(0.35 + 0.65 * strength)
        tint[..., 3] = 0.7 * strength
        height, width = rgb.shape[:2]
        ax.imshow(tint, extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _checked_images(top: TopActivations) -> Tensor:
    if top.images is None:
        raise ConfigError("this result kept no images; run top_activating(..., keep_images=True) to plot them")
    return top.images


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    return class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)


def _grid_shape(n_images: int, n_columns: int | None) -> tuple[int, int]:
    if n_columns is not None and (isinstance(n_columns, bool) or not isinstance(n_columns, int) or n_columns <= 0):
        raise ConfigError(f"n_columns={n_columns!r} must be a positive number of columns (or None)")
    columns = n_columns or math.ceil(math.sqrt(n_images))
    return math.ceil(n_images / columns), columns


def _draw_top_images(
    figure: Any, top: TopActivations, feature: int, unnormalize: Unnormalize, n_columns: int | None,
    class_names: Sequence[str] | None,
) -> None:
    row = top.row(feature)
    images = _checked_images(top)[row]
    n_rows, columns = _grid_shape(images.shape[0], n_columns)
    maps = None if top.patch_maps is None else top.patch_maps[row]
    # One scale for the feature, so tints compare across its images.
    vmax = max(float(maps.max()), 1e-12) if maps is not None else 1.0
    axes = figure.subplots(n_rows, columns, squeeze=False)
    for slot, ax in enumerate(axes.flat):
        if slot >= images.shape[0]:
            ax.set_axis_off()
            continue
        _overlay(ax, displayable_image(images[slot], unnormalize), None if maps is None else maps[slot], vmax)
        caption = f"#{int(top.image_indices[row, slot])}  {float(top.scores[row, slot]):.3g}"
        if top.labels is not None:
            caption += f"\n{_class_name(int(top.labels[row, slot]), class_names)}"
        ax.set_title(caption, fontsize=7)


def _save(figure: Figure, path: str | os.PathLike | None, dpi: int) -> Figure:
    if path is not None:
        figure.savefig(path, dpi=dpi, format="png")
    return figure


def plot_top_images(
    top: TopActivations,
    feature: int,
    unnormalize: Unnormalize = None,
    n_columns: int | None = None,
    class_names: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """A grid of ``feature``'s top-activating images, each patch tinted by how strongly the feature fires there.

    Captions give the image's index in the data, its score and (with labels) its class. CLS-only SAEs have
    no patch map, so their images are shown untinted. ``path`` saves a PNG.

    Example:
        >>> plot_top_images(top, 17, unnormalize=preprocess_for(model), path="feature_17_top.png")
    """
    row_count, columns = _grid_shape(_checked_images(top).shape[1], n_columns)
    figure = Figure(figsize=(columns * CELL_INCHES, row_count * CELL_INCHES + 0.4), layout="constrained")
    _draw_top_images(figure, top, feature, unnormalize, n_columns, class_names or top.class_names)
    figure.suptitle(f"feature {feature}: top {top.reduce} activations", fontsize=10)
    return _save(figure, path, dpi)


def plot_heatmap(
    image: Float[Tensor, "channels height width"],
    heatmap: Float[Tensor, "grid_h grid_w"] | Float[Tensor, ""],
    unnormalize: Unnormalize = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """The image beside its per-patch activation map (from :func:`feature_heatmap`), with a colour bar.

    A 0-d ``heatmap`` (a CLS-only SAE) is shown as the image with its activation in the title.

    Example:
        >>> plot_heatmap(images[0], feature_heatmap(model, sae, images[0], 17), preprocess_for(model), path="h.png")
    """
    rgb = displayable_image(image, unnormalize)
    if not isinstance(heatmap, Tensor) or heatmap.ndim not in (0, 2):
        shape = described_shape(heatmap)
        raise InputShapeError(f"heatmap must be [grid_h, grid_w] or a 0-d tensor (from feature_heatmap), got {shape}")
    if heatmap.ndim == 0:
        figure = Figure(figsize=(2 * CELL_INCHES, 2 * CELL_INCHES + 0.4), layout="constrained")
        ax = figure.subplots()
        _overlay(ax, rgb, None, 1.0)
        ax.set_title(f"CLS activation {float(heatmap):.3g}", fontsize=9)
    else:
        figure = Figure(figsize=(4.6 * CELL_INCHES, 2 * CELL_INCHES + 0.4), layout="constrained")
        image_ax, map_ax = figure.subplots(1, 2)
        _overlay(image_ax, rgb, None, 1.0)
        image_ax.set_title("image", fontsize=9)
        _draw_heatmap(map_ax, rgb, heatmap)
        figure.colorbar(map_ax.images[-1], ax=map_ax, shrink=0.8)
    if title is not None:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path, dpi)


def _draw_heatmap(ax: Axes, rgb: np.ndarray, heatmap: Tensor) -> None:
    """The image faded, under the activation map in colour (last image of ``ax``, for a colour bar)."""
    height, width = rgb.shape[:2]
    ax.imshow(rgb, interpolation="nearest")
    ax.imshow(
        heatmap.detach().double().cpu().numpy(), cmap="magma", alpha=0.65, interpolation="nearest",
        extent=(-0.5, width - 0.5, height - 0.5, -0.5),
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"max {float(heatmap.max()):.3g} on patch {tuple(int(i) for i in _argmax_2d(heatmap))}", fontsize=8)


def _argmax_2d(grid: Tensor) -> tuple[int, int]:
    flat = int(grid.argmax())
    return flat // grid.shape[1], flat % grid.shape[1]


def plot_feature_card(
    top: TopActivations,
    feature: int,
    unnormalize: Unnormalize = None,
    n_columns: int | None = None,
    class_names: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """One feature at a glance: its top images with patches tinted, the best image's per-patch heatmap and
    (when the data had labels) the histogram of the top images' classes, under a title with the feature id,
    its max activation and the hook.

    Example:
        >>> plot_feature_card(top, 17, unnormalize=preprocess_for(model), path="feature_17.png")
    """
    row = top.row(feature)
    images = _checked_images(top)
    row_count, columns = _grid_shape(images.shape[1], n_columns)
    class_names = class_names or top.class_names
    side_panels = 1 + (top.labels is not None)
    height = max(row_count, 2 * side_panels) * CELL_INCHES + 0.5
    figure = Figure(figsize=((columns + 2.6) * CELL_INCHES, height), layout="constrained")
    grid_figure, side_figure = figure.subfigures(1, 2, width_ratios=[columns, 2.6])
    _draw_top_images(grid_figure, top, feature, unnormalize, n_columns, class_names)
    side_axes = side_figure.subplots(side_panels, 1, squeeze=False)[:, 0]
    best = displayable_image(images[row, 0], unnormalize)
    if top.patch_maps is not None:
        _draw_heatmap(side_axes[0], best, top.patch_maps[row, 0])
        side_figure.colorbar(side_axes[0].images[-1], ax=side_axes[0], shrink=0.8)
    else:
        _overlay(side_axes[0], best, None, 1.0)
        side_axes[0].set_title(f"best image (CLS) {float(top.scores[row, 0]):.3g}", fontsize=8)
    if top.labels is not None:
        _draw_label_histogram(side_axes[1], top.labels[row], class_names)
    score_name = "max activation" if top.reduce == "max" else "top mean activation"
    figure.suptitle(
        f"feature {feature}  ·  {score_name} {float(top.scores[row, 0]):.3g}  ·  {top.hook_name} "
        f"({top.reduce} over {TOKEN_SET_DESCRIPTIONS.get(top.token_set, top.token_set)}, {top.n_images} images)",
        fontsize=10,
    )
    return _save(figure, path, dpi)


def _draw_label_histogram(ax: Axes, labels: Tensor, class_names: Sequence[str] | None, most: int = 8) -> None:
    counts = Counter(int(label) for label in labels if int(label) >= 0).most_common(most)
    if not counts:
        ax.set_axis_off()
        ax.set_title("no labelled images", fontsize=8)
        return
    names = [_class_name(label, class_names) for label, _ in counts]
    ax.barh(range(len(counts)), [count for _, count in counts], color=HIGHLIGHT(0.6))
    ax.set_yticks(range(len(counts)), names, fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"classes of the top {labels.numel()}", fontsize=8)
