"""What the feature browser shows about each feature, gathered in one streamed pass in bounded memory.

Each batch of images becomes its positive SAE activations as sparse entries (image, token row, feature,
value); :class:`FeatureStats` folds them into per-feature counts, histograms and running top images, whose
size depends on the number of features, never on the number of images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_sae_hooks.hook_names import stop_layer
from vit_sae_hooks.model.splice import sae_reads_heads
from vit_sae_hooks.tokens import TokenLayout, TokenSelection, take_rows
from vit_sae_hooks.viz.top_activating import merge_top

if TYPE_CHECKING:
    from vit_sae_hooks.model import HookedViT
    from vit_sae_hooks.sae import SAE

# Token kinds, in the order of the CLS-versus-patch columns; "image" is the one row of a hook without tokens.
KINDS = ("cls", "register", "patch", "image")
# Activation histograms count each positive activation in a bin of a quarter octave (a factor 2**0.25),
# from 2**LOWEST_OCTAVE up; smaller and larger values land in the end bins. Fixed bins need no second pass.
BINS_PER_OCTAVE = 4
LOWEST_OCTAVE = -16
N_BINS = 32 * BINS_PER_OCTAVE
# Patch maps of top images are kept as levels 0..MAP_LEVELS of the image's own score (one byte per patch).
MAP_LEVELS = 63


@dataclass(frozen=True)
class TokenRows:
    """What each row of the SAE's activations is: its model position, kind (index into ``KINDS``) and patch
    index on the grid (-1 for CLS and register rows). A hook without a token axis has one row of kind "image".
    For video the grid is a filmstrip: the time positions side by side, so patch ``(t, row, column)`` sits at
    ``row * (frames * width) + t * width + column``.

    Example:
        >>> TokenRows.of(model, sae).kinds  # an all-token SAE on a CLS model with 16 patches
        tensor([0, 2, 2, ..., 2])
    """

    where: slice | Int[Tensor, " rows"] | None
    positions: Int[Tensor, " rows"]
    kinds: Int[Tensor, " rows"]
    patches: Int[Tensor, " rows"]
    flatten_heads: bool

    @classmethod
    def of(cls, model: HookedViT, sae: SAE) -> TokenRows:
        """The rows ``sae`` reads at its hook of ``model`` (its ``token_set``)."""
        flatten_heads, has_positions = sae_reads_heads(model, sae, sae.hook_name)
        if not has_positions:
            zero = torch.zeros(1, dtype=torch.long)
            return cls(None, zero, torch.full((1,), KINDS.index("image")), zero - 1, flatten_heads)
        layout = TokenLayout.of(model.cfg)
        selection = TokenSelection.resolve(sae.token_set, model.cfg.n_ctx, layout)
        positions = selection.positions
        is_patch = layout.is_patch(positions)
        kinds = torch.where(is_patch, KINDS.index("patch"), KINDS.index("register"))
        if layout.has_cls_token:
            kinds[positions == 0] = KINDS.index("cls")
        frame, index = layout.patch_coordinates(positions)
        if layout.frames > 1:
            row, column = index // layout.grid[1], index % layout.grid[1]
            index = row * (layout.frames * layout.grid[1]) + frame * layout.grid[1] + column
        patches = torch.where(is_patch, index, -1)
        return cls(selection.where, positions, kinds, patches, flatten_heads)

    @property
    def n_patches(self) -> int:
        """How many rows are patches."""
        return int((self.patches >= 0).sum())


@dataclass
class SparseActivations:
    """The positive activations of a batch of images on the tracked features, one entry per (image, row, feature).

    ``feature`` is a feature's position among the tracked features, not its id in the SAE.
    """

    image: Int[Tensor, " entries"]
    row: Int[Tensor, " entries"]
    feature: Int[Tensor, " entries"]
    value: Float[Tensor, " entries"]
    n_images: int
    n_rows: int


def hook_rows(
    model: HookedViT, sae: SAE, rows: TokenRows, images: Float[Tensor, "batch channels height width"], with_output: bool
) -> tuple[Float[Tensor, "batch rows d_in"], Float[Tensor, "batch d_out"] | None]:
    """The rows ``sae`` reads on ``images``, and the model's output if asked for (otherwise the forward stops
    after the hook's block).

    Example:
        >>> x, _ = hook_rows(model, sae, TokenRows.of(model, sae), images, with_output=False)
    """
    captured: list[Tensor] = []
    stop = stop_layer(sae.hook_name)
    output = None
    with torch.no_grad(), model.hooks(fwd_hooks=[(sae.hook_name, lambda activation, hook: captured.append(activation))]):
        if with_output:
            output = model(images)
        elif stop is None:
            model(images, return_type=None)
        else:
            model(images, stop_at_layer=stop)
    x = captured[0].flatten(-2) if rows.flatten_heads else captured[0]
    return (x[:, None] if rows.where is None else take_rows(x, rows.where)), output


def sparse_activations(sae: SAE, x: Float[Tensor, "batch rows d_in"], tracked: Int[Tensor, " d_sae"]) -> SparseActivations:
    """The positive activations of ``sae`` on ``x`` as entries, for features with ``tracked[id] >= 0`` (their
    position among the tracked features). TopK SAEs never build the dense ``[batch, rows, d_sae]`` tensor.

    Example:
        >>> acts = sparse_activations(sae, x, torch.arange(sae.d_sae))
    """
    with torch.no_grad():
        if sae.has_sparse_code:
            values, indices = sae.encode_topk(x)
            image, row, slot = (values > 0).nonzero(as_tuple=True)
            feature, value = indices[image, row, slot], values[image, row, slot]
        else:
            acts = sae.encode(x)
            image, row, feature = (acts > 0).nonzero(as_tuple=True)
            value = acts[image, row, feature]
    position = tracked.to(feature.device)[feature]
    keep = position >= 0
    return SparseActivations(
        image[keep].cpu(), row[keep].cpu(), position[keep].cpu(), value[keep].float().cpu(), x.shape[0], x.shape[1]
    )


def histogram_bins(values: Float[Tensor, " n"]) -> Int[Tensor, " n"]:
    """The activation-histogram bin of each positive value (bin ``i`` starts at ``2 ** (LOWEST_OCTAVE + i / BINS_PER_OCTAVE)``).

    Example:
        >>> histogram_bins(torch.tensor([1.0, 2.0]))
        tensor([64, 68])
    """
    return ((values.log2() - LOWEST_OCTAVE) * BINS_PER_OCTAVE).floor().long().clamp(0, N_BINS - 1)


class FeatureStats:
    """Running statistics of ``n_features`` features over the images seen so far (CPU tensors).

    Per feature: how many images and tokens it fired on, its max activation, its fires and activation sum per
    token kind (``KINDS``), its activation histogram (``histogram_bins``), its ``top`` best images (score = max
    activation over the SAE's tokens; ties to the earlier image) with their patch maps (:meth:`top_maps`), and
    with ``n_labels`` the activation-weighted sum of each image's label logits.

    Example:
        >>> stats = FeatureStats(sae.d_sae, top=16, rows=TokenRows.of(model, sae))
        >>> stats.update(sparse_activations(sae, x, torch.arange(sae.d_sae)), first_image=0)
    """

    def __init__(self, n_features: int, top: int, rows: TokenRows, n_labels: int = 0):
        self.n_features, self.top, self.rows = n_features, top, rows
        self.n_images = 0
        self.token_fires = torch.zeros(n_features, dtype=torch.long)
        self.image_fires = torch.zeros(n_features, dtype=torch.long)
        self.max_activation = torch.zeros(n_features)
        self.kind_fires = torch.zeros(n_features, len(KINDS), dtype=torch.long)
        self.kind_sums = torch.zeros(n_features, len(KINDS), dtype=torch.float64)
        self.histogram = torch.zeros(n_features, N_BINS, dtype=torch.int32)
        self.top_scores = torch.zeros(n_features, top)
        self.top_images = torch.full((n_features, top), -1, dtype=torch.long)
        self.top_slots = torch.arange(top).repeat(n_features, 1)
        self.map_pool = torch.zeros(n_features, top, rows.n_patches, dtype=torch.uint8)
        self.label_sums = torch.zeros(n_features, n_labels) if n_labels else None
        self.weight_sums = torch.zeros(n_features, dtype=torch.float64)
        self.logit_sums = torch.zeros(n_labels, dtype=torch.float64)

    def update(
        self, acts: SparseActivations, first_image: int, label_logits: Float[Tensor, "batch n_labels"] | None = None
    ) -> None:
        """Fold in one batch whose first image is number ``first_image`` of the data."""
        n_features, feature, value = self.n_features, acts.feature, acts.value
        self.n_images += acts.n_images
        self.token_fires += torch.bincount(feature, minlength=n_features)
        by_kind = feature * len(KINDS) + self.rows.kinds[acts.row]
        self.kind_fires.view(-1).index_add_(0, by_kind, torch.ones_like(by_kind))
        self.kind_sums.view(-1).index_add_(0, by_kind, value.double())
        by_bin = feature * N_BINS + histogram_bins(value)
        self.histogram.view(-1).index_add_(0, by_bin, torch.ones_like(by_bin, dtype=torch.int32))
        scores = torch.zeros(acts.n_images * n_features)
        scores = scores.scatter_reduce_(0, acts.image * n_features + feature, value, "amax").view(acts.n_images, n_features)
        self.image_fires += (scores > 0).sum(0)
        torch.maximum(self.max_activation, scores.amax(0), out=self.max_activation)
        if self.label_sums is not None and label_logits is not None:
            logits = label_logits.float().cpu()
            self.label_sums += scores.T @ logits
            self.weight_sums += scores.sum(0).double()
            self.logit_sums += logits.sum(0).double()
        self._merge_top(acts, scores, first_image)

    def _merge_top(self, acts: SparseActivations, scores: Float[Tensor, "batch n_features"], first_image: int) -> None:
        # Only features with an image that beats their current k-th score change; equal scores lose to the
        # earlier image already kept.
        candidate = scores > self.top_scores[:, -1]
        changed = candidate.any(0).nonzero().flatten()
        if changed.numel() == 0:
            return
        top = self.top
        new_scores = torch.where(candidate[:, changed], scores[:, changed], 0.0).T
        merged, order = merge_top(self.top_scores[changed], new_scores, top)
        from_kept, batch_image = order < top, order - top
        kept_order = order.clamp(max=top - 1)
        images = torch.where(from_kept, self.top_images[changed].gather(1, kept_order), first_image + batch_image)
        # Maps stay in their pool slot while their image stays in the list; an entering image takes a slot
        # that no kept image holds (unused slots sort first), so no map is ever copied.
        kept_slots = self.top_slots[changed].gather(1, kept_order)
        used = torch.zeros(changed.numel(), top + 1, dtype=torch.long)
        used.scatter_(1, torch.where(from_kept, kept_slots, top), 1)
        free_slots = used[:, :top].argsort(dim=1, stable=True)
        entering = ~from_kept
        slots = torch.where(from_kept, kept_slots, free_slots.gather(1, (entering.cumsum(1) - 1).clamp(min=0)))
        self.top_scores[changed] = merged
        self.top_images[changed] = torch.where(merged > 0, images, -1)
        self.top_slots[changed] = slots
        if self.rows.n_patches:
            self._fill_new_maps(acts, scores, changed, entering & (merged > 0), batch_image, slots)

    def _fill_new_maps(
        self, acts: SparseActivations, scores: Tensor, changed: Tensor, entering: Tensor, batch_image: Tensor, slots: Tensor
    ) -> None:
        """Write the patch maps of the images that just entered the top lists of the ``changed`` features."""
        pool = self.map_pool.flatten(0, 1)
        column, rank = entering.nonzero(as_tuple=True)
        pool_row = changed[column] * self.top + slots[column, rank]
        pool[pool_row] = 0
        # row_of[image, column]: the pool row of this batch's image in changed feature number ``column``, or -1.
        row_of = torch.full((acts.n_images, changed.numel()), -1, dtype=torch.long)
        row_of[batch_image[column, rank], column] = pool_row
        column_of = torch.full((self.n_features,), -1, dtype=torch.long)
        column_of[changed] = torch.arange(changed.numel())
        patch = self.rows.patches[acts.row]
        entry_column = column_of[acts.feature]
        keep = (entry_column >= 0) & (patch >= 0)
        entry_row = row_of[acts.image[keep], entry_column[keep]]
        written = entry_row >= 0
        image, feature = acts.image[keep][written], acts.feature[keep][written]
        levels = (acts.value[keep][written] / scores[image, feature] * MAP_LEVELS).round().clamp(0, MAP_LEVELS)
        pool[entry_row[written], patch[keep][written]] = levels.to(torch.uint8)

    def top_maps(self) -> Int[Tensor, "n_features top n_patches"]:
        """The patch maps of each feature's top images, in the order of ``top_images`` (levels 0..MAP_LEVELS of
        each image's score)."""
        pool_rows = torch.arange(self.n_features)[:, None] * self.top + self.top_slots
        return self.map_pool.flatten(0, 1)[pool_rows]

    def label_scores(self) -> Float[Tensor, "n_features n_labels"] | None:
        """Each feature's activation-weighted mean label logit minus the mean over all images (None without labels).

        Ranking labels by it ranks them by how much more the images the feature fires on match each label
        than images do on average; features that never fired get NaN.
        """
        if self.label_sums is None:
            return None
        weighted = self.label_sums.double() / self.weight_sums[:, None]
        return (weighted - self.logit_sums / max(self.n_images, 1)).float()


def strongest_per_row(acts: SparseActivations, feature_ids: Int[Tensor, " n_features"], most: int) -> list[list[list[Any]]]:
    """For each image of the batch and each of its token rows, up to ``most`` ``[feature id, activation, ...]``
    pairs, strongest first (flattened into one list per row).

    Example:
        >>> strongest_per_row(acts, torch.arange(sae.d_sae), most=16)[0][0]
        [17, 3.21, 4, 0.5]
    """
    group = acts.image * acts.n_rows + acts.row
    by_value = acts.value.argsort(descending=True, stable=True)
    order = by_value[group[by_value].argsort(stable=True)]
    group, value, feature = group[order], acts.value[order], feature_ids[acts.feature[order]]
    counts = torch.bincount(group, minlength=acts.n_images * acts.n_rows)
    starts = torch.cumsum(counts, 0) - counts
    keep = torch.arange(group.numel()) - starts[group] < most
    group, value, feature = group[keep], value[keep], feature[keep]
    counts = torch.bincount(group, minlength=acts.n_images * acts.n_rows).tolist()
    values = [float(f"{v:.3g}") for v in value.tolist()]
    features = feature.tolist()
    result, start = [], 0
    for image in range(acts.n_images):
        per_row = []
        for count in counts[image * acts.n_rows : (image + 1) * acts.n_rows]:
            pairs = [item for pair in zip(features[start : start + count], values[start : start + count], strict=True)
                     for item in pair]
            per_row.append(pairs)
            start += count
        result.append(per_row)
    return result
