"""``evaluate``: the published SAE metrics for any SAE on any HookedViT over an image dataset, in one pass.

Per batch the model runs once clean (caching only the SAE's hook and the residual stream entering the hook's
block), the SAE runs once on the cached activations, and the two interventions (reconstruction spliced in,
activation zeroed) each re-run only the blocks from the hook's block on, starting from that cached residual.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vit_sae_hooks.data.batches import image_batches, model_batches
from vit_sae_hooks.errors import ConfigError, DataError, InputShapeError
from vit_sae_hooks.evals.heads import head_for
from vit_sae_hooks.evals.metrics import DownstreamStats, ReconstructionStats
from vit_sae_hooks.hook_names import block_input, hook_layer, stop_layer
from vit_sae_hooks.model.splice import sae_reads_heads
from vit_sae_hooks.tokens import TokenSelection, TokenSpec

if TYPE_CHECKING:
    from vit_sae_hooks.model import HookedViT
    from vit_sae_hooks.sae import SAE

# (result key, published column name, format): the Prisma tables' ten columns, then CLIP-Scope's four.
PRISMA_COLUMNS = (
    ("explained_variance_pct", "% Explained var.", ".1f"),
    ("avg_l0", "Avg L0", ".5g"),
    ("avg_cls_l0", "Avg CLS L0", ".4g"),
    ("cos_sim", "Cos sim", ".3f"),
    ("recon_cos_sim", "Recon cos sim", ".3f"),
    ("ce", "CE", ".3f"),
    ("recon_ce", "Recon CE", ".3f"),
    ("zero_abl_ce", "Zero abl CE", ".3f"),
    ("ce_recovered_pct", "% CE recovered", ".2f"),
    ("alive_features_pct", "% Alive features", ".2f"),
)
CLIPSCOPE_COLUMNS = (
    ("mse", "MSE", ".2f"),
    ("explained_variance", "Explained Variance", ".3f"),
    ("dead_feature_proportion", "Dead Feature Proportion", ".4g"),
    ("active_feature_proportion", "Active Feature Proportion", ".4g"),
)
COLUMNS = PRISMA_COLUMNS + CLIPSCOPE_COLUMNS
# The variants Prisma's evaluation code computes for three columns (docs/metrics.md); `variant="prisma"`.
PRISMA_CODE_VARIANTS = {
    "explained_variance_pct": "explained_variance_per_batch_pct",
    "cos_sim": "cos_sim_columns",
    "avg_l0": "avg_patch_l0",
}

ZeroAblation = Literal["tokens", "all"]


@dataclass
class EvalResult:
    """The metrics of one SAE on one model and dataset; metrics read as attributes (``result.ce``).

    ``metrics`` holds every column of the published tables (keys as in :data:`COLUMNS`) and the variants in
    docs/metrics.md; a metric that does not apply (no labels, no CLS token) is None.

    Example:
        >>> result = evaluate(model, sae, "imagenet/val", head="zero-shot:head.safetensors", limit=1000)
        >>> print(result.markdown_header()); print(result.markdown_row())
    """

    metrics: dict[str, float | None]
    model_name: str
    hook_name: str
    tokens: str
    n_images: int
    n_tokens: int
    sae_name: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    # A Matryoshka SAE's inner prefixes, each evaluated as the SAE of its first latents (by prefix size).
    by_prefix: dict[int, EvalResult] = field(default_factory=dict)

    def __getattr__(self, name: str) -> float | None:
        metrics = self.__dict__.get("metrics", {})
        if name in metrics:
            return metrics[name]
        raise AttributeError(f"EvalResult has no metric {name!r}; metrics: {sorted(metrics)}")

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready types (NaN and None become null).

        Example:
            >>> json.dumps(result.to_dict())
        """
        metrics = {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in self.metrics.items()}
        values = {
            "sae": self.sae_name, "model": self.model_name, "hook_name": self.hook_name, "tokens": self.tokens,
            "n_images": self.n_images, "n_tokens": self.n_tokens, "metrics": metrics, "settings": self.settings,
        }
        if self.by_prefix:
            values["by_prefix"] = {str(width): result.to_dict() for width, result in self.by_prefix.items()}
        return values

    def rows(self) -> list[EvalResult]:
        """This result followed by one per Matryoshka prefix (smallest first), e.g. for a table.

        Example:
            >>> for row in result.rows(): print(row.markdown_row())
        """
        return [self, *(self.by_prefix[width] for width in sorted(self.by_prefix))]

    @staticmethod
    def markdown_header(columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
        """The header and separator lines of the table :meth:`markdown_row` rows belong to.

        Example:
            >>> print(EvalResult.markdown_header())
        """
        names = ["SAE", "Hook", "Tokens", *(name for _, name, _ in columns)]
        return "| " + " | ".join(names) + " |\n|" + "|".join("---" for _ in names) + "|"

    def markdown_row(
        self, label: str | None = None, variant: Literal["definitions", "prisma"] = "definitions",
        columns: Sequence[tuple[str, str, str]] = COLUMNS,
    ) -> str:
        """One markdown table row in the published column order; ``variant="prisma"`` fills explained
        variance, cos sim and Avg L0 with the estimators Prisma's code uses (docs/metrics.md).

        Example:
            >>> result.markdown_row(label="measured")
        """
        keys = {key: PRISMA_CODE_VARIANTS.get(key, key) if variant == "prisma" else key for key, _, _ in columns}
        values = {key: self.metrics.get(keys[key]) for key, _, _ in columns}
        return format_row(label or self.sae_name or "-", self.hook_name, self.tokens, values, columns)


def format_row(
    label: str, hook_name: str, tokens: str, values: Mapping[str, float | None],
    columns: Sequence[tuple[str, str, str]] = COLUMNS,
) -> str:
    """A markdown row from metric values keyed as in :data:`COLUMNS` (missing or None shown as ``-``).

    Example:
        >>> format_row("published", "blocks.9.hook_resid_post", "all", entry.metrics)
    """
    cells = [label, hook_name, tokens]
    for key, _, fmt in columns:
        value = values.get(key)
        cells.append("-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt))
    return "| " + " | ".join(cells) + " |"


# ---------------------------------------------------------------------------------------------- data
def _label_map(classes: Sequence[str], head: nn.Module) -> Int[Tensor, " n_dataset_classes"] | None:
    """How a dataset's class indices map to the head's: by class name, else by position, else an error."""
    n_classes = head.n_classes
    head_names = getattr(head, "class_names", None)
    if head_names:
        def key(name: str) -> str:
            return name.lower().replace("_", " ").strip()

        index = {}
        for position, name in enumerate(head_names):
            index.setdefault(key(name), position)
        if all(key(name) in index for name in classes):
            return torch.tensor([index[key(name)] for name in classes])
    if len(classes) == n_classes:
        # ImageNet's WordNet-id folders sort into the standard class order the shipped names follow.
        return None
    raise DataError(
        f"the dataset's {len(classes)} classes (e.g. {list(classes[:3])}) match neither the head's class names nor "
        f"its number of classes ({n_classes}); name the class folders after the head's classes, use all "
        f"{n_classes} class folders (ImageNet layout), or use a head built for these classes"
    )


# ---------------------------------------------------------------------------------------------- evaluate
class _HookRows:
    """The rows of a hook's activation an SAE reads (flattened over images and tokens), and writing rows back."""

    def __init__(
        self, model: HookedViT, sae: SAE, hook_name: str, activation: Tensor, tokens: TokenSpec, width: int | None = None
    ):
        self.flatten_heads, self.has_positions = sae_reads_heads(model, sae, hook_name, width)
        self.has_cls_token = model.cfg.has_cls_token
        if not self.has_positions:
            self.selection = None
            return
        n_pos = activation.shape[1]
        # The layout of the forward pass that produced the activation (padding included).
        self.selection = TokenSelection.resolve(tokens, n_pos, model.token_layout)
        if not self.selection.per_image and self.selection.positions.numel() == 0:
            raise ConfigError(f"tokens={tokens!r} selects no position of the {n_pos} at {hook_name!r}")

    def _features(self, activation: Tensor) -> Tensor:
        return activation.flatten(-2) if self.flatten_heads else activation

    def rows(self, activation: Tensor) -> tuple[Float[Tensor, "n d_in"], Bool[Tensor, " n"], Int[Tensor, " n"]]:
        """The rows, whether each is a CLS token, and the image (0-based within the batch) it belongs to."""
        x = self._features(activation)
        batch = x.shape[0]
        if self.selection is None:
            no_cls = torch.zeros(batch, dtype=torch.bool, device=x.device)
            return x, no_cls, torch.arange(batch, device=x.device)
        image, position = self.selection.row_positions(batch, x.device).unbind(-1)
        return self.selection.rows(x), (position == 0) & self.has_cls_token, image

    def writer(self, values: Tensor | None, all_tokens: bool = False):
        """A hook writing ``values [n, d_in]`` (zeros if None) into the selected rows (every row with ``all_tokens``)."""

        def hook(activation: Tensor, hook: Any) -> Tensor:
            if values is None and (all_tokens or self.selection is None):
                return torch.zeros_like(activation)
            x = self._features(activation)
            if self.selection is None:
                return values.to(x.dtype).view_as(x)
            rows = torch.zeros_like(self.selection.rows(x)) if values is None else values
            x = self.selection.replace_rows(x, rows)
            return x.unflatten(-1, activation.shape[-2:]) if self.flatten_heads else x

        return hook


def _encode(sae: SAE, rows: Float[Tensor, "n d_in"]) -> tuple[Tensor, Any]:
    """The SAE's reconstruction of ``rows`` (a transcoder's prediction) and which latents fired (sparse for TopK)."""
    if sae.is_transcoder:
        return sae.reconstruct(rows), sae.encode(rows) != 0
    stats = sae.norm_stats(rows)
    if sae.has_sparse_code:
        values, indices = sae.encode_topk(rows)
        return sae.decode_topk(values, indices, stats), (indices, values != 0)
    acts = sae.encode(rows)
    return sae.decode(acts, stats), acts != 0


def _is_image_mask(tokens: TokenSpec) -> bool:
    """Whether ``tokens`` is a boolean mask (``[pos]``, or ``[n_images, pos]`` per image)."""
    return isinstance(tokens, Tensor) and tokens.dtype == torch.bool


def _batch_tokens(tokens: TokenSpec, first: int, batch: int) -> TokenSpec:
    """The token spec for images ``first .. first + batch``: a per-image mask's rows, anything else as it is."""
    if not (_is_image_mask(tokens) and tokens.ndim == 2):
        return tokens
    if tokens.shape[0] < first + batch:
        raise InputShapeError(
            f"the token mask has {tokens.shape[0]} rows but the data has more images (at least {first + batch}); pass "
            "one [pos] row per image, in the data's order (or a [pos] mask for all of them)"
        )
    return tokens[first : first + batch]


def _describe_tokens(tokens: TokenSpec) -> str:
    if _is_image_mask(tokens):
        return f"mask {list(tokens.shape)}"
    return str(list(tokens))


def evaluate(
    model: HookedViT,
    sae: SAE,
    data: Tensor | DataLoader | Dataset | Iterable | str | os.PathLike,
    head: str | os.PathLike | nn.Module | None = None,
    labels: Int[Tensor, " n_images"] | None = None,
    tokens: TokenSpec = None,
    zero_ablation: ZeroAblation = "tokens",
    batch_size: int = 64,
    limit: int | None = None,
    num_workers: int | None = None,
    use_logit_scale: bool = False,
    downstream: bool = True,
    active_image_threshold: int = 10,
    sae_name: str | None = None,
    progress: bool = True,
) -> EvalResult:
    """The Prisma and CLIP-Scope metrics of ``sae`` spliced into ``model`` over ``data``.

    Args:
        data: preprocessed images ``[n, 3, H, W]`` (with ``labels``), an image folder (preprocessed with
            :func:`~vit_sae_hooks.data.preprocess_for`), a dataset, or a loader of ``(images, labels)``; for
            SigLIP 2, batches may be dicts of NaFlex inputs (``pixel_values``, ``pixel_attention_mask``,
            ``spatial_shapes``, ``labels``), whose padding is never spliced nor counted.
        head: class logits for the cross-entropies: None (the model's own classifier head if it has one),
            ``"model"``, ``"zero-shot:FILE"`` (a saved :class:`ZeroShotHead`), or a module.
        tokens: the token set the metrics and the splice cover (default: the SAE's ``token_set``).
        zero_ablation: zero the hook on the SAE's tokens (``"tokens"``) or on every token (``"all"``).

    A transcoder is scored on the hook it predicts: explained variance and cosine of its prediction of
    ``hook_name_out`` (e.g. the MLP output), CE with the prediction in place of that hook (the MLP replaced),
    and zero ablation of that hook (the MLP removed). A Matryoshka SAE also gets one result per inner prefix
    (``result.by_prefix``), from the same forward passes.
        downstream: False skips the output, CE and KL metrics and stops the clean pass after the hook.
        active_image_threshold: a latent is "active" (CLIP-Scope) if it fires for at least this many images.

    The model and SAE stay where they are (same device); images follow the model's device and dtype.

    Example:
        >>> result = evaluate(model, sae, "imagenet/val", head="zero-shot:imagenet_head.safetensors", limit=5000)
        >>> result.ce_recovered_pct
    """
    hook_name = sae.hook_name
    if hook_name is None:
        raise ConfigError(
            "the SAE records no hook_name; set sae.cfg.hook_name to the hook it reads (e.g. 'blocks.9.hook_resid_post')"
        )
    model.check_hook_name(hook_name)
    target_name = sae.hook_name_out if sae.is_transcoder else hook_name
    if target_name is None:
        raise ConfigError(
            "the transcoder records no hook_name_out; set sae.cfg.hook_name_out to the hook it predicts "
            "(e.g. 'blocks.9.hook_mlp_out')"
        )
    model.check_hook_name(target_name)
    if model.acts_to_saes:
        raise ConfigError(
            f"the model has SAEs attached at {sorted(model.acts_to_saes)}; evaluate needs the clean model: "
            "call model.reset_saes() first"
        )
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    if sae.W_enc.device != device:
        raise ConfigError(f"the SAE is on {sae.W_enc.device} but the model on {device}; move it with sae.to({str(device)!r})")
    if zero_ablation not in ("tokens", "all"):
        raise ConfigError(f"zero_ablation={zero_ablation!r} is not 'tokens' or 'all'")
    tokens = sae.token_set if tokens is None else tokens
    # A [n_images, pos] mask picks tokens per image: each batch takes its own rows.
    per_image_mask = _is_image_mask(tokens) and tokens.ndim == 2
    head = head_for(model, head, use_logit_scale) if downstream else None
    if head is not None:
        head = head.to(device)
    batches, total, dataset = image_batches(model, data, labels, batch_size, limit, num_workers)
    label_map = None
    if head is not None and getattr(dataset, "classes", None):
        label_map = _label_map(dataset.classes, head)

    # The interventions happen at the hook the SAE writes (a transcoder's output hook).
    layer = hook_layer(target_name)
    resid_name = block_input(layer) if layer is not None else None
    cached = list(dict.fromkeys([hook_name, target_name] + ([resid_name] if downstream and resid_name else [])))
    variants = _prefix_variants(sae)
    reconstruction = {width: ReconstructionStats(variant.d_sae, active_image_threshold) for width, variant in variants}
    effects = {width: DownstreamStats() for width, _ in variants}
    selection: _HookRows | None = None
    target_selection: _HookRows | None = None
    seen = 0

    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="img", desc=f"eval {hook_name}", file=sys.stderr, disable=not progress)
    was_training = model.training, sae.training
    model.eval()
    sae.eval()
    try:
        with torch.inference_mode():
            for batch_images, batch_labels, batch_inputs in model_batches(batches, limit):
                images = batch_images.to(device=device, dtype=dtype)
                inputs = {name: value.to(device) for name, value in batch_inputs.items()}
                batch = images.shape[0]
                stop = stop_layer(target_name) if not downstream and layer is not None else None
                output, cache = model.run_with_cache(
                    images, names_filter=cached, return_cache_object=False, stop_at_layer=stop, **inputs
                )
                activation, target = cache[hook_name], cache[target_name]
                batch_tokens = _batch_tokens(tokens, seen, batch)
                if selection is None or per_image_mask or model.token_layout.valid is not None:
                    selection = _HookRows(model, sae, hook_name, activation, batch_tokens)
                    target_selection = selection if target_name == hook_name else _HookRows(
                        model, sae, target_name, target, batch_tokens, width=sae.d_out
                    )
                x, is_cls, image_index = selection.rows(activation)
                y = x if target_selection is selection else target_selection.rows(target)[0]
                if downstream:
                    start = cache[resid_name] if layer is not None else images

                    def run(hook_fn, start=start, inputs=inputs):
                        with model.hooks(fwd_hooks=[(target_name, hook_fn)]):
                            return model(start, start_at_layer=layer, **inputs)

                    output_zero = run(target_selection.writer(None, all_tokens=zero_ablation == "all"))
                    logits = logits_zero = None
                    if head is not None:
                        logits, logits_zero = head(output), head(output_zero)
                        labels_seen = _checked_labels(batch_labels, label_map, head.n_classes, device)
                for width, variant in variants:
                    recon, fired = _encode(variant, x)
                    reconstruction[width].update(y, recon, fired, is_cls, image_index, batch)
                    if downstream:
                        output_recon = run(target_selection.writer(recon))
                        logits_recon = head(output_recon) if head is not None else None
                        effects[width].update(output, output_recon, logits, logits_recon, logits_zero,
                                              labels_seen if head is not None else None)
                seen += batch
                bar.update(batch)
    finally:
        bar.close()
        model.train(was_training[0])
        sae.train(was_training[1])
    if seen == 0:
        raise DataError("the data yielded no images; check the folder, loader or limit")
    results = {}
    for width, _ in variants:
        metrics = reconstruction[width].compute()
        metrics.update(effects[width].compute() if downstream else {})
        for key, _, _ in COLUMNS:
            metrics.setdefault(key, None)
        results[width] = EvalResult(
            metrics=metrics, model_name=str(model.cfg.model_name),
            hook_name=hook_name if target_name == hook_name else f"{hook_name} -> {target_name}",
            tokens=tokens if isinstance(tokens, str) else _describe_tokens(tokens), n_images=seen,
            n_tokens=reconstruction[width].n_tokens,
            sae_name=sae_name if width is None else f"{sae_name or 'sae'}[:{width}]",
            settings={"zero_ablation": zero_ablation, "use_logit_scale": use_logit_scale,
                      "head": type(head).__name__ if head is not None else None,
                      "active_image_threshold": active_image_threshold},
        )
    result = results.pop(None)
    result.by_prefix = results
    return result


def _prefix_variants(sae: SAE) -> list[tuple[int | None, SAE]]:
    # The SAE itself (width None), then a Matryoshka SAE's inner prefixes as SAEs of their first latents.
    inner = (sae.cfg.prefixes or ())[:-1] if hasattr(sae, "prefix_sae") else ()
    return [(None, sae), *((width, sae.prefix_sae(width)) for width in inner)]


def _checked_labels(labels: Tensor | None, label_map: Tensor | None, n_classes: int, device) -> Tensor | None:
    if labels is None:
        return None
    labels = torch.as_tensor(labels).long().to(device)
    if label_map is not None:
        labelled = labels >= 0
        labels = torch.where(labelled, label_map.to(device)[labels.clamp_min(0)], labels)
    if labels.numel() and int(labels.max()) >= n_classes:
        raise DataError(
            f"label {int(labels.max())} is out of range for a head with {n_classes} classes; the labels do not "
            "match the head: use a head built for this dataset's classes"
        )
    if labels.numel() and int(labels.min()) < -1:
        raise DataError(f"label {int(labels.min())} is negative; use class indices, or -1 for an unlabelled image")
    return labels


def sweep(
    model: HookedViT, saes: Iterable[tuple[str, SAE]], data: Any, **kwargs: Any
) -> Iterator[EvalResult]:
    """:func:`evaluate` for each ``(name, sae)`` in turn, yielding results as they finish.

    Example:
        >>> for result in sweep(model, [("l9", sae9), ("l10", sae10)], "imagenet/val", limit=1000): ...
    """
    for name, sae in saes:
        yield evaluate(model, sae, data, sae_name=name, **kwargs)

