"""Feature circuits: attribution graphs over SAE features, with SAE error nodes, across layers.

SAEs (or transcoders) are spliced, with their error terms, at two or more hooks. Every SAE contributes one
node per feature and one **error node** (the part of the hook's activation its reconstruction misses), so
that the hook's output is exactly ``decode(features) + error`` and, with no node changed, the model's output
is exactly the clean output. A node's value can be set to its **baseline** on its own: zero, its mean over
reference images, or its value on corrupted images.

For a metric ``m`` of the output (a scalar), with ``S`` integrated-gradient steps at ``α_s = (s + ½) / S``
along the straight path from every node of a hook at its baseline (``α = 0``) to every node at its clean
value (``α = 1``), the rest of the model recomputed from there::

    ḡ_u       = 1/S Σ_s ∂m/∂u (α_s)                               (mean gradient of the metric at node u)
    A(u)      = Σ_{images, tokens} (u_clean − u_base) · ḡ_u        (node attribution; error nodes: · over d)
    R_d       = Σ_{images, tokens} ḡ_d · d                         (target d's linear read-out of the metric)
    w(u → d)  = Σ_{images, tokens} (u_clean − u_base) · 1/S Σ_s ∂R_d/∂u (α_s on u's hook)   (edge weight)
    w(u → m)  = A(u)                                               (edges from the last SAE to the metric)

Completeness: the attributions of all nodes at one hook sum to ``m(clean) − m(that hook at its baseline)``
as ``S`` grows, and the edges into ``d`` from every node at the hook before it sum to ``R_d(clean) −
R_d(that hook at its baseline)``: the target's exact change, weighted by the metric's gradient at it.
``method="attribution"`` is the one-step linear approximation: ``ḡ`` and ``∂R_d/∂u`` at the clean values.

Example:
    >>> circuit = feature_circuit(model, [sae1, sae2, sae3], images, lambda out: out[:, 0].mean(), top_nodes=8)
    >>> circuit.nodes[:3]; circuit.faithfulness([4, 8, 16]).fraction
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_sae_hooks.checks import positive_int
from vit_sae_hooks.errors import ConfigError, HookNameError, InputShapeError
from vit_sae_hooks.experiments.patching import Metric, metrics_per_variant, scalar_metric
from vit_sae_hooks.hook_names import hook_layer, stop_layer
from vit_sae_hooks.sae import SAE
from vit_sae_hooks.sae.formats.saelens import is_saelens_sae

METRIC = "metric"
"""The ``hook_name`` of the metric node that edges from the last SAE point to."""

BASELINES = ("zero", "mean")
METHODS = ("integrated_gradients", "attribution")
POSITIONS = ("summed", "per_token")


@dataclass(frozen=True)
class Node:
    """One node of a circuit: a feature (``feature=None``: the SAE's error node) of the SAE at ``hook_name``,
    at model position ``position`` (``None``: summed over the SAE's tokens).

    ``attribution`` is the node's effect on the metric (see the module docstring); it is not part of a node's
    identity, so ``Node(hook, 12)`` built by hand equals the circuit's node for feature 12 at ``hook``.

    Example:
        >>> circuit.ablate([Node("blocks.2.hook_resid_post", 12), Node("blocks.2.hook_resid_post", None)])
    """

    hook_name: str
    feature: int | None
    position: int | None = None
    attribution: float = field(default=0.0, compare=False)

    @property
    def is_error(self) -> bool:
        """Whether this is an SAE's error node."""
        return self.feature is None and self.hook_name != METRIC

    @property
    def name(self) -> str:
        """A short unique name: ``blocks.2.hook_resid_post/f12@5`` (``/error``, ``@5`` only per token)."""
        if self.hook_name == METRIC:
            return METRIC
        what = "error" if self.feature is None else f"f{self.feature}"
        where = "" if self.position is None else f"@{self.position}"
        return f"{self.hook_name}/{what}{where}"


@dataclass(frozen=True)
class Edge:
    """The effect ``weight`` of ``source`` on the metric through ``target`` (the module docstring's ``w``)."""

    source: Node
    target: Node
    weight: float


@dataclass
class Faithfulness:
    """The metric when only the top-``n`` nodes keep their values, for each ``n`` of ``n_nodes``.

    ``fraction`` is ``(metric - empty) / (clean - empty)``: 1 when the kept nodes carry the whole effect, 0
    when they carry none (``empty``: every node of every SAE at its baseline).
    """

    n_nodes: list[int]
    metric: Float[Tensor, " n"]
    clean: float
    empty: float

    @property
    def fraction(self) -> Float[Tensor, " n"]:
        """``(metric - empty) / (clean - empty)`` per ``n``."""
        return (self.metric - self.empty) / (self.clean - self.empty)


@dataclass
class _Site:
    """One SAE of the circuit: its clean and baseline node values and, once computed, gradients and attributions."""

    sae: SAE
    hook_name: str
    start_layer: int | None
    positions: Int[Tensor, " rows"] | None = None
    clean_acts: Float[Tensor, "batch rows d_sae"] | None = None
    clean_error: Float[Tensor, "batch rows d_out"] | None = None
    base_acts: Tensor | None = None  # broadcastable to clean_acts
    base_error: Tensor | None = None
    grad_acts: Tensor | None = None  # ḡ, [batch, rows, d_sae]
    grad_error: Tensor | None = None
    acts_attribution: Float[Tensor, "rows d_sae"] | None = None
    error_attribution: Float[Tensor, " rows"] | None = None

    def row_of(self, position: int) -> int:
        rows = (self.positions == position).nonzero()
        if len(rows) == 0:
            raise ConfigError(
                f"position {position} is not one of the tokens the SAE at {self.hook_name!r} is spliced on "
                f"({self.positions.tolist()}); use one of those, or position=None for all of them"
            )
        return int(rows[0])

    def interpolate(self, alphas: Tensor) -> tuple[Tensor, Tensor]:
        """Node values ``base + α (clean - base)`` for each α, flattened to ``[len(alphas) * batch, rows, ..]``."""
        shape = (-1, 1, 1, 1)
        acts = self.base_acts + alphas.view(shape) * (self.clean_acts - self.base_acts)
        error = self.base_error + alphas.view(shape) * (self.clean_error - self.base_error)
        return acts.flatten(0, 1), error.flatten(0, 1)


class _Override:
    """What a forward pass does at one site: replace node values, or keep what the model computes (and maybe
    record it)."""

    def __init__(self, acts: Callable[[Tensor], Tensor] | None = None, error: Callable[[Tensor], Tensor] | None = None,
                 record: dict[str, Tensor] | None = None):
        self.acts, self.error, self.record = acts, error, record

    def hooks(self, hook_name: str) -> list[tuple[str, Callable]]:
        def on_acts(value: Tensor, hook) -> Tensor:
            value = value if self.acts is None else self.acts(value)
            if self.record is not None:
                self.record["acts"] = value
                self.record["positions"] = hook.ctx.get("positions")
            return value

        def on_error(value: Tensor, hook) -> Tensor:
            value = value if self.error is None else self.error(value)
            if self.record is not None:
                self.record["error"] = value
            return value

        return [(f"{hook_name}.hook_sae_acts_post", on_acts), (f"{hook_name}.hook_sae_error", on_error)]


class Circuit:
    """A feature circuit computed by :func:`feature_circuit`: nodes, edges, and the model to test them on.

    Attributes:
        nodes: the kept nodes of every SAE (by hook, then by decreasing ``|attribution|``).
        edges: edges between kept nodes at successive hooks, and from the last SAE's kept nodes to the
            metric node ``Node("metric", None)``.
        hooks: the SAEs' hooks in the order the model computes them.
        metric_node: the metric as a node (``hook_name="metric"``; its attribution: the clean metric minus the
            metric with every node of the last SAE at its baseline), the target of the last SAE's edges.
        clean_metric: the metric on the clean images.
        baseline_metric: per hook, the metric with every node of that hook at its baseline (run exactly).

    Example:
        >>> circuit.node_attributions("blocks.2.hook_resid_post").shape  # [d_sae + 1]
    """

    def __init__(self, model, sites: list[_Site], images: Tensor, metric: Metric, settings: dict[str, Any],
                 max_batch: int):
        self.model, self._sites, self.images, self.metric = model, sites, images, metric
        self.settings, self.max_batch = settings, max_batch
        self.hooks = [site.hook_name for site in sites]
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        self.clean_metric = float("nan")
        self.metric_node = Node(METRIC, None)
        self.baseline_metric: dict[str, float] = {}
        self._incoming: dict[Node, tuple[Tensor, Tensor]] = {}
        # The clean residual stream entering each block a site's forward passes start from.
        self._resid: dict[int, Tensor] = {}

    # ----------------------------------------------------------------------------------------------- queries
    def _site(self, hook_name: str) -> _Site:
        for site in self._sites:
            if site.hook_name == hook_name:
                return site
        raise ConfigError(f"the circuit has no SAE at {hook_name!r}; its hooks are {self.hooks}")

    def node_attributions(self, hook_name: str) -> Float[Tensor, " d_sae_plus_1"]:
        """Every feature's attribution at ``hook_name`` summed over tokens and images; the last entry is the
        error node's.

        Example:
            >>> circuit.node_attributions("blocks.2.hook_resid_post").topk(5)
        """
        site = self._site(hook_name)
        return torch.cat([site.acts_attribution.sum(0), site.error_attribution.sum(0, keepdim=True)])

    def token_attributions(self, hook_name: str) -> tuple[Int[Tensor, " rows"], Float[Tensor, "rows d_sae_plus_1"]]:
        """Per token: the model positions the SAE at ``hook_name`` covers and each (position, node)'s attribution
        summed over images (last column: the error node).

        Example:
            >>> positions, scores = circuit.token_attributions("blocks.2.hook_resid_post")
        """
        site = self._site(hook_name)
        return site.positions, torch.cat([site.acts_attribution, site.error_attribution[:, None]], dim=1)

    def incoming(self, target: Node) -> tuple[Int[Tensor, " rows"], Float[Tensor, "rows d_sae_plus_1"]]:
        """The edge weights into a kept ``target`` from every node (per token) of the SAE at the hook before it:
        the upstream model positions and ``w(u -> target)`` per (position, feature), error node last.

        Example:
            >>> positions, weights = circuit.incoming(circuit.nodes_at(hooks[1])[0])
            >>> weights.sum()  # ≈ the target's exact change when the hook before is at its baseline, read out
        """
        if target not in self._incoming:
            raise ConfigError(
                f"{target.name} is not a kept node with an SAE before it; edges are computed into the kept nodes "
                f"(circuit.nodes) of hooks {self.hooks[1:]}"
            )
        acts, error = self._incoming[target]
        upstream = self._sites[self.hooks.index(target.hook_name) - 1]
        return upstream.positions, torch.cat([acts, error[:, None]], dim=1)

    def nodes_at(self, hook_name: str) -> list[Node]:
        """The kept nodes at ``hook_name``."""
        self._site(hook_name)
        return [node for node in self.nodes if node.hook_name == hook_name]

    def gradients(self, hook_name: str) -> tuple[Float[Tensor, "batch rows d_sae"], Float[Tensor, "batch rows d_out"]]:
        """``ḡ`` at ``hook_name``: the metric's mean gradient at each feature and error value (per image, token)."""
        site = self._site(hook_name)
        return site.grad_acts, site.grad_error

    def all_nodes(self) -> list[Node]:
        """Every node of every SAE at the circuit's granularity (per token or summed), with its attribution."""
        everything = [torch.ones_like(self._scores(site), dtype=torch.bool) for site in self._sites]
        return [node for site, chosen in zip(self._sites, everything, strict=True) for node in self._nodes_of(site, chosen)]

    def _nodes_of(self, site: _Site, chosen: Tensor) -> list[Node]:
        """The nodes of ``site`` where ``chosen`` (shaped like :meth:`_scores`) is True."""
        scores = self._scores(site)
        error_index = scores.shape[-1] - 1
        nodes = []
        for index in chosen.nonzero().tolist():
            position = int(site.positions[index[0]]) if len(index) == 2 else None
            feature = index[-1]
            nodes.append(Node(site.hook_name, None if feature == error_index else feature, position,
                              float(scores[tuple(index)])))
        return nodes

    # ---------------------------------------------------------------------------------------- interventions
    def ablate(self, nodes: Sequence[Node]) -> float:
        """The metric when exactly ``nodes`` are set to their baselines and everything else is computed by the
        model (downstream nodes follow the change). A node with ``position=None`` covers all its SAE's tokens.

        Example:
            >>> circuit.ablate([Node("blocks.2.hook_resid_post", 12)])
        """
        masks = self._masks(nodes)
        with torch.no_grad(), self._spliced():
            return self._metric_with(masks)

    def faithfulness(self, n_nodes: Sequence[int]) -> Faithfulness:
        """The metric when only the top-``n`` nodes of all SAEs (by ``|attribution|``, error nodes included) keep
        their values and every other node is at its baseline, for each ``n``; computed by running the model.

        Example:
            >>> curve = circuit.faithfulness([8, 16, 32]); curve.fraction
        """
        n_nodes = [int(n) for n in n_nodes]
        if not n_nodes or min(n_nodes) < 0:
            raise ConfigError(f"n_nodes must be a non-empty list of node counts >= 0, got {n_nodes}")
        scores = [self._scores(site) for site in self._sites]
        flat = torch.cat([score.flatten() for score in scores]).abs()
        order = flat.argsort(descending=True, stable=True)
        values = []
        with torch.no_grad(), self._spliced():
            for n in [0, *n_nodes]:
                ablated = torch.ones_like(flat, dtype=torch.bool)
                ablated[order[:n]] = False
                masks, first = {}, 0
                for site, score in zip(self._sites, scores, strict=True):
                    masks[site.hook_name] = self._split_mask(site, ablated[first : first + score.numel()].view(score.shape))
                    first += score.numel()
                values.append(self._metric_with(masks))
        return Faithfulness(n_nodes=n_nodes, metric=torch.tensor(values[1:], dtype=torch.float64),
                            clean=self.clean_metric, empty=values[0])

    def _scores(self, site: _Site) -> Tensor:
        """The site's node attributions at the circuit's granularity: ``[rows, d_sae + 1]`` or ``[d_sae + 1]``."""
        per_token = torch.cat([site.acts_attribution, site.error_attribution[:, None]], dim=1)
        return per_token if self.settings["positions"] == "per_token" else per_token.sum(0)

    def _split_mask(self, site: _Site, chosen: Tensor) -> tuple[Tensor, Tensor]:
        """A mask over :meth:`_scores`'s entries as (feature mask ``[rows, d_sae]``, error mask ``[rows]``)."""
        rows = site.clean_acts.shape[1]
        chosen = chosen if chosen.ndim == 2 else chosen.expand(rows, -1)
        return chosen[:, :-1], chosen[:, -1]

    def _metric_with(self, masks: dict[str, tuple[Tensor, Tensor]]) -> float:
        """The metric with the masked node values at their baselines (the SAEs already spliced)."""
        overrides = {site.hook_name: _ablation(site, *masks[site.hook_name]) for site in self._sites
                     if site.hook_name in masks}
        return float(scalar_metric(self.metric(self._run(self.images, overrides))))

    # ------------------------------------------------------------------------------------------ reporting
    def top_paths(self, k: int = 5) -> list[tuple[list[Node], float]]:
        """The ``k`` strongest paths from the first SAE's kept nodes to the metric, each with its strength: the
        edge weight of smallest magnitude along it (a path is as strong as its weakest edge).

        Example:
            >>> for path, strength in circuit.top_paths(3): print(" -> ".join(n.name for n in path), strength)
        """
        outgoing: dict[Node, list[Edge]] = {}
        for edge in self.edges:
            outgoing.setdefault(edge.source, []).append(edge)
        paths: list[tuple[list[Node], float]] = []

        def walk(path: list[Node], strength: float) -> None:
            if path[-1].hook_name == METRIC:
                paths.append((path, strength))
                return
            for edge in outgoing.get(path[-1], []):
                weight = edge.weight if abs(edge.weight) < abs(strength) else strength
                walk([*path, edge.target], weight)

        for node in self.nodes_at(self.hooks[0]):
            walk([node], math.inf)
        paths.sort(key=lambda pair: -abs(pair[1]))
        return paths[:k]

    def to_dict(self) -> dict[str, Any]:
        """Everything the JSON file holds (:meth:`to_json`)."""
        def node_dict(node: Node) -> dict[str, Any]:
            return {"name": node.name, "hook_name": node.hook_name, "feature": node.feature,
                    "position": node.position, "attribution": node.attribution, "is_error": node.is_error}

        return {
            "hooks": self.hooks,
            "settings": self.settings,
            "metric": {"clean": self.clean_metric, "every_node_of_hook_at_baseline": self.baseline_metric},
            "completeness": {hook: {"sum_of_attributions": float(self.node_attributions(hook).sum()),
                                    "exact": self.clean_metric - self.baseline_metric[hook]} for hook in self.hooks},
            "nodes": [node_dict(node) for node in self.nodes],
            "edges": [{"source": edge.source.name, "target": edge.target.name, "weight": edge.weight}
                      for edge in self.edges],
            "top_paths": [{"path": [node.name for node in path], "strength": strength}
                          for path, strength in self.top_paths(10)],
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the circuit (hooks, settings, metric values, nodes, edges, top paths) as JSON.

        Example:
            >>> circuit.to_json("circuit.json")
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    def plot(self, path: str | os.PathLike | None = None, images: Tensor | None = None, unnormalize: Any = None,
             max_nodes_per_hook: int = 10, title: str | None = None):
        """Draw the circuit as a PNG: one row per hook (the metric on top), nodes as boxes with their feature id
        and attribution, error nodes hatched, edge widths by ``|weight|`` (red positive, blue negative). With
        ``images``, each feature box shows the image of ``images`` it is most active on.

        Example:
            >>> circuit.plot("circuit.png", images=images, unnormalize=(mean, std))
        """
        from vit_sae_hooks.experiments.circuit_figure import plot_circuit

        return plot_circuit(self, path, images=images, unnormalize=unnormalize,
                            max_nodes_per_hook=max_nodes_per_hook, title=title)

    def top_images(self, images: Tensor, nodes: Sequence[Node]) -> dict[Node, int]:
        """For each feature node, the index of the image of ``images`` where its activation (summed over its
        SAE's tokens, or at its position) is largest."""
        chosen: dict[Node, int] = {}
        with torch.no_grad(), self._spliced():
            records = {site.hook_name: {} for site in self._sites}
            overrides = {site.hook_name: _Override(record=records[site.hook_name]) for site in self._sites}
            self._run(images, overrides)
        for node in nodes:
            if node.feature is None or node.hook_name == METRIC:
                continue
            site, acts = self._site(node.hook_name), records[node.hook_name]["acts"][..., node.feature]
            score = acts.sum(1) if node.position is None else acts[:, site.row_of(node.position)]
            chosen[node] = int(score.argmax())
        return chosen

    # -------------------------------------------------------------------------------------------- engine
    def _masks(self, nodes: Sequence[Node]) -> dict[str, tuple[Tensor, Tensor]]:
        """Per hook, which (row, feature) values and which rows' error are set to the baseline."""
        masks: dict[str, tuple[Tensor, Tensor]] = {}
        for node in nodes:
            if not isinstance(node, Node):
                raise ConfigError(f"ablate takes circuits.Node objects, got {type(node).__name__}")
            site = self._site(node.hook_name)
            if node.hook_name not in masks:
                rows, d_sae = site.clean_acts.shape[1:]
                masks[node.hook_name] = (torch.zeros(rows, d_sae, dtype=torch.bool),
                                         torch.zeros(rows, dtype=torch.bool))
            acts_mask, error_mask = masks[node.hook_name]
            rows = slice(None) if node.position is None else site.row_of(node.position)
            if node.feature is None:
                error_mask[rows] = True
            else:
                if not 0 <= node.feature < site.sae.d_sae:
                    raise ConfigError(f"feature {node.feature} is out of range for the SAE at {node.hook_name!r} "
                                      f"(d_sae {site.sae.d_sae})")
                acts_mask[rows, node.feature] = True
        return masks

    def _inputs(self, images: Tensor, start_layer: int | None, copies: int) -> tuple[Tensor, dict[str, Any]]:
        source = images if start_layer is None else self._resid[start_layer]
        repeated = source.repeat(copies, *([1] * (source.ndim - 1)))
        return repeated, ({} if start_layer is None else {"start_at_layer": start_layer})

    def _run(self, images: Tensor, overrides: dict[str, _Override], start_layer: int | None = None,
             stop_layer: int | None = None, copies: int = 1, extra_hooks: Sequence[tuple[str, Callable]] = ()) -> Tensor:
        inputs, kwargs = self._inputs(images, start_layer, copies)
        if stop_layer is not None:
            kwargs["stop_at_layer"] = stop_layer
        hooks = [hook for hook_name, override in overrides.items() for hook in override.hooks(hook_name)]
        hooks += list(extra_hooks)
        return self.model.run_with_hooks(inputs, fwd_hooks=hooks, **kwargs)

    def _spliced(self):
        """Every SAE of the circuit attached with its error term (on its own tokens) for a ``with`` block."""
        return self.model.saes([site.sae for site in self._sites], use_error_term=True)

    def _path_gradients(self, index: int, readouts: list[Node | None], alphas: list[float]) -> list[tuple[Tensor, Tensor]]:
        """For each readout (``None``: the metric; a Node: its ``R_d`` at the next hook), the mean over ``alphas``
        of its gradient with respect to every node value of site ``index``, each node of which is on the path
        ``base + α (clean - base)``. Steps are batched into shared forward passes (up to ``max_batch`` images);
        each readout then takes one backward pass through the shared graph."""
        site = self._sites[index]
        batch = self.images.shape[0]
        total_a = [torch.zeros_like(site.clean_acts) for _ in readouts]
        total_e = [torch.zeros_like(site.clean_error) for _ in readouts]
        per_pass = max(1, self.max_batch // batch)
        downstream = self._sites[index + 1] if index + 1 < len(self._sites) and readouts[0] is not None else None
        stop = stop_layer(downstream.hook_name) if downstream is not None else None
        stop = stop if stop is not None and 0 < stop < self.model.cfg.n_layers else None
        for first in range(0, len(alphas), per_pass):
            chunk = alphas[first : first + per_pass]
            alpha = torch.tensor(chunk, dtype=site.clean_acts.dtype, device=site.clean_acts.device)
            acts, error = (value.detach().requires_grad_(True) for value in site.interpolate(alpha))
            overrides = {site.hook_name: _Override(acts=lambda _, acts=acts: acts, error=lambda _, error=error: error)}
            record: dict[str, Tensor] = {}
            if downstream is not None:
                overrides[downstream.hook_name] = _Override(record=record)
            with torch.enable_grad():
                output = self._run(self.images, overrides, site.start_layer, stop, copies=len(chunk))
                if downstream is None:
                    values = [metrics_per_variant(output, len(chunk), self.metric).sum()]
                else:
                    # R_d is linear in the target's values, so one read-out of their sum over the steps serves.
                    acts_sum = record["acts"].unflatten(0, (len(chunk), batch)).sum(0)
                    error_sum = record["error"].unflatten(0, (len(chunk), batch)).sum(0)
                    values = [_readout(downstream, target, acts_sum, error_sum) for target in readouts]
                for t, value in enumerate(values):
                    grad_a, grad_e = torch.autograd.grad(value, [acts, error], allow_unused=True,
                                                         retain_graph=t < len(values) - 1)
                    if grad_a is not None:
                        total_a[t] += grad_a.unflatten(0, (len(chunk), batch)).sum(0)
                    if grad_e is not None:
                        total_e[t] += grad_e.unflatten(0, (len(chunk), batch)).sum(0)
        return [(a / len(alphas), e / len(alphas)) for a, e in zip(total_a, total_e, strict=True)]


def _readout(site: _Site, target: Node, acts: Tensor, error: Tensor) -> Tensor:
    """``R_d`` of ``target`` (a node of ``site``) given the site's feature and error values ``[batch, rows, ..]``."""
    rows = slice(None) if target.position is None else site.row_of(target.position)
    if target.feature is None:
        return (error[:, rows] * site.grad_error[:, rows]).sum()
    return (acts[:, rows, target.feature] * site.grad_acts[:, rows, target.feature]).sum()


def _ablation(site: _Site, acts_mask: Tensor, error_mask: Tensor) -> _Override:
    def acts(live: Tensor) -> Tensor:
        return torch.where(acts_mask.to(live.device), site.base_acts.to(live.dtype), live)

    def error(live: Tensor) -> Tensor:
        return torch.where(error_mask.to(live.device)[:, None], site.base_error.to(live.dtype), live)

    return _Override(acts=acts, error=error)


def _check_arguments(model, saes: Sequence[Any], baseline: Any, method: str, steps: int, positions: str,
                     reference_images: Tensor | None, images: Tensor) -> list[SAE]:
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not one of {METHODS}")
    if positions not in POSITIONS:
        raise ConfigError(f"positions={positions!r} is not one of {POSITIONS}")
    positive_int("steps", steps, "Pass the number of integrated-gradient steps (16 is within 1 % on the demo).")
    if isinstance(baseline, Tensor):
        if baseline.shape != images.shape:
            raise InputShapeError(
                f"baseline images {tuple(baseline.shape)} must have the shape of the images {tuple(images.shape)} "
                "(one corrupted image per clean image)"
            )
    elif baseline not in BASELINES:
        raise ConfigError(f"baseline={baseline!r} is not 'zero', 'mean' or a tensor of corrupted images")
    if baseline == "mean" and not isinstance(baseline, Tensor) and reference_images is None:
        raise ConfigError("baseline='mean' averages node values over reference images: pass reference_images=...")
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise InputShapeError(f"images must be a floating-point tensor, got {type(images).__name__}")
    saes = [SAE.from_saelens(sae) if is_saelens_sae(sae) else sae for sae in saes]
    if not saes:
        raise ConfigError("feature_circuit needs SAEs at two or more hooks (saes=[sae_a, sae_b, ...])")
    seen: dict[str, int] = {}
    for index, sae in enumerate(saes):
        if not isinstance(sae, SAE):
            raise ConfigError(f"saes[{index}] is a {type(sae).__name__}, not an SAE")
        hook_name = sae.output_hook_name
        if hook_name is None:
            raise ConfigError(f"saes[{index}] records no hook_name; set sae.cfg.hook_name to the hook it was trained on")
        if hook_name not in model.hook_dict:
            try:
                model.check_hook_name(hook_name)
            except HookNameError as error:
                raise HookNameError(f"saes[{index}] is for {hook_name!r}, which this model lacks: {error} "
                                    "Pass SAEs trained on this model's hooks.") from error
        if hook_name in seen:
            raise ConfigError(
                f"saes[{seen[hook_name]}] and saes[{index}] are both at {hook_name!r}; a circuit takes one SAE per hook"
            )
        seen[hook_name] = index
        if hook_name in model.acts_to_saes:
            raise ConfigError(
                f"the model already has an SAE attached at {hook_name!r}; feature_circuit attaches its SAEs itself, "
                f"so call model.reset_saes() first"
            )
    return saes


def _start_layer(model, sae: SAE, images: Tensor) -> int | None:
    """The block a forward pass may start from (the cached residual stream) to reach ``sae``'s hooks, or None
    to run from the images (hooks outside blocks, and images the cached stream cannot stand for)."""
    native = images.ndim == 4 and tuple(images.shape[-2:]) == tuple(model.cfg.image_size)
    layers = [hook_layer(name) for name in (sae.output_hook_name, sae.hook_name)]
    if not native or any(layer is None for layer in layers):
        return None
    return min(layers)


def _node_values(circuit: Circuit, images: Tensor, record_resid: bool) -> tuple[list[dict[str, Tensor]], Tensor, list[str]]:
    """One forward pass with every SAE spliced: each site's feature and error values and token positions, the
    output, and the order in which the model computed the SAEs' hooks."""
    sites = circuit._sites
    records: list[dict[str, Tensor]] = [{} for _ in sites]
    order: list[str] = []

    def seen(name: str) -> Callable[[Tensor], Tensor]:
        def note(value: Tensor) -> Tensor:
            order.append(name)
            return value
        return note

    overrides = {site.hook_name: _Override(acts=seen(site.hook_name), record=record)
                 for site, record in zip(sites, records, strict=True)}
    extra = []
    if record_resid:
        for layer in {site.start_layer for site in sites if site.start_layer is not None}:
            def keep(value: Tensor, hook, layer=layer) -> None:
                circuit._resid[layer] = value
            extra.append((f"blocks.{layer}.hook_resid_pre", keep))
    output = circuit._run(images, overrides, extra_hooks=extra)
    return records, output, order


def feature_circuit(
    model,
    saes: Sequence[SAE],
    images: Float[Tensor, "batch channels height width"],
    metric: Metric,
    baseline: str | Tensor = "zero",
    method: str = "integrated_gradients",
    steps: int = 16,
    positions: str = "summed",
    top_nodes: int | None = None,
    node_threshold: float | None = None,
    edges: bool = True,
    reference_images: Float[Tensor, "n channels height width"] | None = None,
    max_batch: int = 64,
) -> Circuit:
    """The feature circuit of ``metric`` on ``images`` through SAEs at two or more hooks (module docstring).

    Args:
        saes: SAEs (or transcoders, or ``sae_lens.SAE`` objects) in the order the model computes their hooks.
        metric: ``output [batch, d_out] -> scalar``, e.g. ``lambda out: out[:, label].mean()``.
        baseline: ``"zero"``, ``"mean"`` (each node's mean over ``reference_images``, per token) or a tensor of
            corrupted images shaped like ``images`` (each node's value there).
        method: ``"integrated_gradients"`` (``steps`` steps) or ``"attribution"`` (one linear step).
        positions: ``"summed"`` (a node per feature, over the SAE's tokens) or ``"per_token"`` (per feature and
            token; the SAE's error at each token is its own node).
        top_nodes, node_threshold: keep, per hook, the ``top_nodes`` nodes of largest ``|attribution|`` and/or
            those with ``|attribution| >= node_threshold`` (default: every node with a nonzero attribution); in
            ``"summed"`` mode each SAE's error node is always kept.
        edges: compute edges between kept nodes (the steps' forward passes are shared by the kept targets;
            each target adds one backward pass per pass).
        max_batch: images per forward pass (integrated-gradient steps are batched up to it).

    Example:
        >>> circuit = feature_circuit(model, [sae_l1, sae_l2, sae_l3], images, lambda out: out[:, 3].mean(),
        ...                           top_nodes=8)
        >>> circuit.faithfulness([4, 8, 16]).fraction
    """
    saes = _check_arguments(model, saes, baseline, method, steps, positions, reference_images, images)
    if top_nodes is not None:
        positive_int("top_nodes", top_nodes, "Pass the nodes to keep per hook, or None.")
    sites = [_Site(sae=sae, hook_name=sae.output_hook_name, start_layer=_start_layer(model, sae, images)) for sae in saes]
    settings = {"method": method, "steps": steps if method == "integrated_gradients" else 1, "positions": positions,
                "baseline": "images" if isinstance(baseline, Tensor) else baseline, "top_nodes": top_nodes,
                "node_threshold": node_threshold, "n_images": int(images.shape[0])}
    circuit = Circuit(model, sites, images, metric, settings, max_batch)
    was_training = model.training
    model.eval()
    try:
        with circuit._spliced():
            _compute(circuit, baseline, reference_images, top_nodes, node_threshold, edges)
    finally:
        model.train(was_training)
    return circuit


def _compute(circuit: Circuit, baseline: Any, reference_images: Tensor | None, top_nodes: int | None,
             node_threshold: float | None, edges: bool) -> None:
    sites, images = circuit._sites, circuit.images
    with torch.no_grad():
        records, output, order = _node_values(circuit, images, record_resid=True)
        circuit.clean_metric = float(scalar_metric(circuit.metric(output)))
        expected = [site.hook_name for site in sites]
        if order != expected:
            raise ConfigError(
                f"the SAEs are at hooks the model computes in the order {order}, but were passed in the order "
                f"{expected}; pass saes in the model's order"
            )
        for site, record in zip(sites, records, strict=True):
            site.positions, site.clean_acts, site.clean_error = record["positions"], record["acts"], record["error"]
            if site.positions is None:
                raise ConfigError(f"{site.hook_name!r} has no token axis; feature circuits need SAEs on token hooks")
        _set_baselines(circuit, baseline, reference_images)
        for site in sites:
            everything = (torch.ones(site.clean_acts.shape[1:], dtype=torch.bool),
                          torch.ones(site.clean_acts.shape[1], dtype=torch.bool))
            circuit.baseline_metric[site.hook_name] = circuit._metric_with({site.hook_name: everything})
    alphas = _alphas(circuit.settings["method"], circuit.settings["steps"])
    for index, site in enumerate(sites):
        ((site.grad_acts, site.grad_error),) = circuit._path_gradients(index, [None], alphas)
        site.acts_attribution = ((site.clean_acts - site.base_acts) * site.grad_acts).sum(0)
        site.error_attribution = ((site.clean_error - site.base_error) * site.grad_error).sum((0, -1))
    circuit.nodes = [node for site in sites for node in _kept(circuit, site, top_nodes, node_threshold)]
    circuit.metric_node = Node(METRIC, None, None, circuit.clean_metric - circuit.baseline_metric[sites[-1].hook_name])
    circuit.edges = [Edge(node, circuit.metric_node, node.attribution) for node in circuit.nodes_at(sites[-1].hook_name)]
    if edges:
        for index in range(1, len(sites)):
            _edges_into(circuit, index, alphas)


def _alphas(method: str, steps: int) -> list[float]:
    return [(s + 0.5) / steps for s in range(steps)] if method == "integrated_gradients" else [1.0]


def _set_baselines(circuit: Circuit, baseline: Any, reference_images: Tensor | None) -> None:
    sites = circuit._sites
    if isinstance(baseline, Tensor):
        records, _, _ = _node_values(circuit, baseline, record_resid=False)
        for site, record in zip(sites, records, strict=True):
            site.base_acts, site.base_error = record["acts"], record["error"]
    elif baseline == "mean":
        sums: list[list[Tensor]] = [[torch.zeros(()), torch.zeros(())] for _ in sites]
        count = 0
        for first in range(0, reference_images.shape[0], circuit.max_batch):
            chunk = reference_images[first : first + circuit.max_batch]
            records, _, _ = _node_values(circuit, chunk, record_resid=False)
            for totals, record, site in zip(sums, records, sites, strict=True):
                if record["acts"].shape[1:] != site.clean_acts.shape[1:]:
                    raise InputShapeError(
                        f"reference images give {record['acts'].shape[1]} tokens at {site.hook_name!r}, the images "
                        f"{site.clean_acts.shape[1]}; use reference images of the same size"
                    )
                totals[0] = totals[0] + record["acts"].sum(0, keepdim=True)
                totals[1] = totals[1] + record["error"].sum(0, keepdim=True)
            count += chunk.shape[0]
        for site, (acts, error) in zip(sites, sums, strict=True):
            site.base_acts, site.base_error = acts / count, error / count
    else:
        for site in sites:
            site.base_acts = torch.zeros_like(site.clean_acts[:1])
            site.base_error = torch.zeros_like(site.clean_error[:1])


def _kept(circuit: Circuit, site: _Site, top_nodes: int | None, node_threshold: float | None) -> list[Node]:
    """The nodes of ``site`` the circuit keeps, by decreasing ``|attribution|``."""
    scores = circuit._scores(site)
    magnitude = scores.abs()
    chosen = magnitude > 0
    if node_threshold is not None:
        chosen &= magnitude >= node_threshold
    if top_nodes is not None and int(chosen.sum()) > top_nodes:
        ranked = torch.where(chosen, magnitude, torch.full_like(magnitude, -1.0)).flatten().topk(top_nodes).indices
        chosen = torch.zeros_like(chosen).flatten()
        chosen[ranked] = True
        chosen = chosen.view(scores.shape)
    if circuit.settings["positions"] == "summed":
        chosen[-1] = True  # the error node
    return sorted(circuit._nodes_of(site, chosen), key=lambda node: -abs(node.attribution))


def _edges_into(circuit: Circuit, index: int, alphas: list[float]) -> None:
    """Edges from the kept nodes of site ``index - 1`` into the kept nodes of site ``index``."""
    upstream, downstream = circuit._sites[index - 1], circuit._sites[index]
    targets = circuit.nodes_at(downstream.hook_name)
    if not targets:
        return
    gradients = circuit._path_gradients(index - 1, list(targets), alphas)
    sources = circuit.nodes_at(upstream.hook_name)
    for target, (grad_a, grad_e) in zip(targets, gradients, strict=True):
        acts = ((upstream.clean_acts - upstream.base_acts) * grad_a).sum(0)  # [rows, d_sae]
        error = ((upstream.clean_error - upstream.base_error) * grad_e).sum((0, -1))  # [rows]
        circuit._incoming[target] = (acts, error)
        for source in sources:
            rows = slice(None) if source.position is None else upstream.row_of(source.position)
            weight = error[rows].sum() if source.feature is None else acts[rows, source.feature].sum()
            if float(weight) != 0.0:
                circuit.edges.append(Edge(source, target, float(weight)))
