"""The picture of a feature circuit: one row per hook (first SAE at the bottom, the metric on top), nodes as
boxes, edges as lines whose width follows ``|weight|``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from torch import Tensor

from vit_sae_hooks.data.display import displayable_image
from vit_sae_hooks.errors import ConfigError

if TYPE_CHECKING:
    from vit_sae_hooks.experiments.circuits import Circuit, Node

BOX_W, BOX_H, THUMB = 0.82, 0.56, 0.34
POSITIVE, NEGATIVE = "#c0392b", "#2c6fbb"


def _shown(circuit: Circuit, hook_name: str, max_nodes: int) -> list[Node]:
    nodes = circuit.nodes_at(hook_name)
    features = [node for node in nodes if not node.is_error][: max(1, max_nodes - 1)]
    errors = [node for node in nodes if node.is_error][: max(0, max_nodes - len(features))]
    return sorted(features + errors, key=lambda node: -node.attribution)


def plot_circuit(circuit: Circuit, path: str | os.PathLike | None = None, images: Tensor | None = None,
                 unnormalize: Any = None, max_nodes_per_hook: int = 10, title: str | None = None) -> Figure:
    """Draw ``circuit`` (see :meth:`Circuit.plot`); saved as a PNG when ``path`` is given.

    Example:
        >>> plot_circuit(circuit, "circuit.png", images=images, unnormalize=(mean, std))
    """
    metric_node = circuit.metric_node
    if max_nodes_per_hook < 1:
        raise ConfigError(f"max_nodes_per_hook must be >= 1, got {max_nodes_per_hook}")
    rows = [_shown(circuit, hook, max_nodes_per_hook) for hook in circuit.hooks]
    rows.append([metric_node])
    width = max(len(row) for row in rows)
    places: dict[Node, tuple[float, float]] = {}
    for y, row in enumerate(rows):
        offset = (width - len(row)) / 2
        for i, node in enumerate(row):
            places[node] = (offset + i + 0.5, float(y))
    thumbs = circuit.top_images(images, [n for row in rows for n in row]) if images is not None else {}

    figure = Figure(figsize=(1.5 * width + 2.6, 1.5 * len(rows) + 0.9))
    ax = figure.add_axes([2.4 / (1.5 * width + 2.6), 0.02, 1 - 2.5 / (1.5 * width + 2.6), 0.9])
    ax.set_xlim(0, width)
    ax.set_ylim(-0.5, len(rows) - 0.5)
    ax.axis("off")
    scale = max([abs(n.attribution) for n in places if n.hook_name != metric_node.hook_name] + [1e-12])
    colours = colormaps["RdBu_r"]
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-scale, vmax=scale)

    shown_edges = [e for e in circuit.edges if e.source in places and e.target in places]
    biggest = max([abs(e.weight) for e in shown_edges] + [1e-12])
    for edge in sorted(shown_edges, key=lambda e: abs(e.weight)):
        (x0, y0), (x1, y1) = places[edge.source], places[edge.target]
        strength = abs(edge.weight) / biggest
        if strength < 0.02:
            continue
        ax.plot([x0, x1], [y0 + BOX_H / 2, y1 - BOX_H / 2], color=POSITIVE if edge.weight > 0 else NEGATIVE,
                linewidth=0.4 + 5.5 * strength, alpha=0.25 + 0.6 * strength, zorder=1, solid_capstyle="round")

    for node, (x, y) in places.items():
        is_metric = node.hook_name == metric_node.hook_name
        face = "#f4f4f4" if is_metric else colours(norm(node.attribution))
        box = FancyBboxPatch((x - BOX_W / 2, y - BOX_H / 2), BOX_W, BOX_H, boxstyle="round,pad=0.02,rounding_size=0.06",
                             facecolor=face, edgecolor="#555555" if node.is_error else "#222222",
                             hatch="////" if node.is_error else None, linewidth=1.4 if node.is_error else 0.8, zorder=2)
        ax.add_patch(box)
        if is_metric:
            label = f"metric\nclean {circuit.clean_metric:.3g}"
        else:
            what = "error" if node.is_error else f"#{node.feature}"
            where = "" if node.position is None else f" @{node.position}"
            label = f"{what}{where}\n{node.attribution:+.3g}"
        text_y = y - BOX_H / 2 + 0.13 if node in thumbs else y
        dark = not is_metric and abs(norm(node.attribution) - 0.5) > 0.35
        ax.text(x, text_y, label, ha="center", va="center", fontsize=7.5, zorder=4,
                color="white" if dark else "black",
                bbox=dict(facecolor="white", alpha=0.75, pad=0.6, linewidth=0) if node.is_error else None)
        if node in thumbs:
            rgb = displayable_image(images[thumbs[node]], unnormalize)
            ax.imshow(np.asarray(rgb), extent=(x - THUMB / 2, x + THUMB / 2, y - 0.02, y + THUMB - 0.02),
                      zorder=3, interpolation="nearest", aspect="auto")
    for y, label in enumerate([*circuit.hooks, "metric"]):
        figure.text(0.01, (0.02 + 0.9 * (y + 0.5) / len(rows)), label, fontsize=8, va="center", ha="left",
                    family="monospace")
    settings = circuit.settings
    method = "integrated gradients" if settings["method"] == "integrated_gradients" else "attribution (linear)"
    steps = f", {settings['steps']} steps" if settings["method"] == "integrated_gradients" else ""
    tokens = ", a node per feature and token (@ model position)" if settings["positions"] == "per_token" else ""
    figure.suptitle(title or f"Feature circuit: {method}{steps}, baseline {settings['baseline']}, "
                    f"{settings['n_images']} images{tokens} (red raises the metric, blue lowers it; hatched: SAE error)",
                    fontsize=9)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=130)
    return figure
