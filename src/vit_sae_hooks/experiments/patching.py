"""Activation patching, attribution patching over SAE features, and feature ablation sweeps for images.

Every function takes a ``metric``: a function of the model output ``[batch, d_out]`` returning a scalar
tensor (e.g. the mean logit difference). Patching runs start at the patched block (``start_at_layer``) from
the cached residual stream and batch many patches into one forward pass, so a sweep costs a fraction of the
naive loop. The number of positions comes from the activations themselves (TransformerLens's
``get_act_patch_*`` read it from the input's last dimension, which for images is the width).

Example:
    >>> logit_diff = lambda out: (out[:, 3] - out[:, 5]).mean()
    >>> effects = patching.resid(model, clean_images, corrupted_images, logit_diff)  # [n_layers, n_pos]

The patch kinds of TransformerLens's ``get_act_patch_*``: the residual stream before, between and after the
sublayers, attention and MLP outputs per (layer, token) (:func:`per_position`); each head's output, queries,
keys, values or pattern at every token (:func:`heads`) and each head's output, queries, keys or values at one
token (:func:`heads_by_position`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_sae_hooks.errors import ConfigError, HookNameError, InputShapeError
from vit_sae_hooks.experiments.interventions import ablate_features
from vit_sae_hooks.hook_names import additive_boundary, block_input, stop_layer
from vit_sae_hooks.tokens import TokenSelection, TokenSpec

Metric = Callable[[Tensor], Tensor]

PER_POSITION_ACTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
PER_HEAD_ACTS = ("z", "q", "k", "v", "pattern")
PER_HEAD_POSITION_ACTS = ("z", "q", "k", "v")


def _check_pair(clean: Tensor, corrupted: Tensor) -> None:
    if clean.shape != corrupted.shape:
        raise InputShapeError(
            f"clean images {tuple(clean.shape)} and corrupted images {tuple(corrupted.shape)} must have the same shape"
        )


def scalar_metric(value: Any) -> Tensor:
    """A metric's value as a 0-d tensor, or a :class:`ConfigError` if the metric did not reduce to a scalar.

    Example:
        >>> scalar_metric(logits[:, 3].mean())
    """
    value = torch.as_tensor(value)
    if value.numel() != 1:
        raise ConfigError(
            f"metric must return a scalar (e.g. out[:, label].mean()), got shape {tuple(value.shape)}; reduce "
            "over the batch inside the metric"
        )
    return value.reshape(())


def metrics_per_variant(outputs: Tensor, n_variants: int, metric: Metric) -> Float[Tensor, " n_variants"]:
    """``metric`` of each of ``n_variants`` equal parts of a batched output (variants stacked along the batch).

    Example:
        >>> metrics_per_variant(model(images.repeat(4, 1, 1, 1)), 4, metric)  # [4]
    """
    return torch.stack([scalar_metric(metric(out)) for out in outputs.unflatten(0, (n_variants, -1))])


def _patch_sweep(
    model,
    clean: Tensor,
    corrupted: Tensor,
    metric: Metric,
    hook: str,
    layers: Sequence[int] | None,
    n_variants_of: Callable[[Tensor], int],
    patch: Callable[[Tensor, Tensor, Tensor], Tensor],
    max_batch: int,
) -> Tensor:
    """Shared engine: for each layer, every variant patches part of ``blocks.L.{hook}`` from the clean run."""
    _check_pair(clean, corrupted)
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [layer % n_layers for layer in layers]
    names = [f"blocks.{layer}.{hook}" for layer in layers]
    starts = [block_input(layer) for layer in layers]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=names)
        _, corrupted_cache = model.run_with_cache(corrupted, names_filter=starts)
    rows = []
    batch = clean.shape[0]
    for layer, name, start in zip(layers, names, starts, strict=True):
        clean_act = clean_cache[name]
        n_variants = n_variants_of(clean_act)
        chunk = max(1, max_batch // batch)
        results = []
        for first in range(0, n_variants, chunk):
            variant_ids = torch.arange(first, min(first + chunk, n_variants), device=clean_act.device)
            resid = corrupted_cache[start].repeat(len(variant_ids), 1, 1)

            def patch_hook(activation, hook, variant_ids=variant_ids, clean_act=clean_act):
                grouped = activation.unflatten(0, (len(variant_ids), batch))
                return patch(grouped, clean_act, variant_ids).flatten(0, 1)

            with torch.no_grad():
                outputs = model.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=[(name, patch_hook)])
            results.append(metrics_per_variant(outputs, len(variant_ids), metric))
        rows.append(torch.cat(results))
    return torch.stack(rows)


def per_position(
    model,
    clean_images: Float[Tensor, "batch channels height width"],
    corrupted_images: Float[Tensor, "batch channels height width"],
    metric: Metric,
    act: str = "resid_pre",
    layers: Sequence[int] | None = None,
    max_batch: int = 256,
) -> Float[Tensor, "n_layers n_pos"]:
    """The metric on the corrupted images when one (layer, token) activation is patched from the clean images.

    ``act`` is one of ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``.

    Example:
        >>> effects = per_position(model, clean, corrupted, metric, act="mlp_out")  # [n_layers, pos]
    """
    if act not in PER_POSITION_ACTS:
        raise ConfigError(f"act={act!r} is not one of {PER_POSITION_ACTS}")

    def patch(grouped: Tensor, clean_act: Tensor, variant_ids: Tensor) -> Tensor:
        one_hot = torch.nn.functional.one_hot(variant_ids, clean_act.shape[1]).bool()  # [variants, pos]
        return torch.where(one_hot[:, None, :, None], clean_act[None], grouped)

    return _patch_sweep(
        model, clean_images, corrupted_images, metric, f"hook_{act}", layers, lambda a: a.shape[1], patch, max_batch
    )


def resid(model, clean_images: Tensor, corrupted_images: Tensor, metric: Metric, **kwargs) -> Float[Tensor, "n_layers n_pos"]:
    """Residual-stream patching over (layer × token): :func:`per_position` with ``act="resid_pre"``.

    Example:
        >>> effects = resid(model, clean, corrupted, metric)
    """
    return per_position(model, clean_images, corrupted_images, metric, act="resid_pre", **kwargs)


def heads(
    model,
    clean_images: Float[Tensor, "batch channels height width"],
    corrupted_images: Float[Tensor, "batch channels height width"],
    metric: Metric,
    act: str = "z",
    layers: Sequence[int] | None = None,
    max_batch: int = 256,
) -> Float[Tensor, "n_layers n_heads"]:
    """The metric on the corrupted images when one head's ``act`` (``z`` = the head's output, ``q``, ``k``,
    ``v`` or its attention ``pattern``) is patched from the clean images at every token.

    Example:
        >>> effects = heads(model, clean, corrupted, metric)  # [n_layers, n_heads]
    """
    if act not in PER_HEAD_ACTS:
        raise ConfigError(f"act={act!r} is not one of {PER_HEAD_ACTS}")
    # Patterns are [batch, head, query, key]; the others [batch, pos, head, d].
    head_axis = 1 if act == "pattern" else 2

    def patch(grouped: Tensor, clean_act: Tensor, variant_ids: Tensor) -> Tensor:
        one_hot = torch.nn.functional.one_hot(variant_ids, clean_act.shape[head_axis]).bool()  # [variants, head]
        shape = [len(variant_ids)] + [1] * clean_act.ndim
        shape[1 + head_axis] = clean_act.shape[head_axis]
        return torch.where(one_hot.view(shape), clean_act[None], grouped)

    return _patch_sweep(
        model, clean_images, corrupted_images, metric, f"attn.hook_{act}", layers, lambda a: a.shape[head_axis], patch,
        max_batch,
    )


def heads_by_position(
    model,
    clean_images: Float[Tensor, "batch channels height width"],
    corrupted_images: Float[Tensor, "batch channels height width"],
    metric: Metric,
    act: str = "z",
    layers: Sequence[int] | None = None,
    max_batch: int = 256,
) -> Float[Tensor, "n_layers n_pos n_heads"]:
    """The metric on the corrupted images when one head's ``act`` (``z``, ``q``, ``k``, ``v``) is patched from
    the clean images at one token.

    Example:
        >>> effects = heads_by_position(model, clean, corrupted, metric)  # [n_layers, pos, n_heads]
    """
    if act not in PER_HEAD_POSITION_ACTS:
        raise ConfigError(f"act={act!r} is not one of {PER_HEAD_POSITION_ACTS}")
    n_heads = model.cfg.n_heads

    def patch(grouped: Tensor, clean_act: Tensor, variant_ids: Tensor) -> Tensor:
        n_pos = clean_act.shape[1]
        one_hot = torch.nn.functional.one_hot(variant_ids, n_pos * n_heads).bool().view(-1, n_pos, n_heads)
        return torch.where(one_hot[:, None, :, :, None], clean_act[None], grouped)

    effects = _patch_sweep(
        model, clean_images, corrupted_images, metric, f"attn.hook_{act}", layers, lambda a: a.shape[1] * n_heads,
        patch, max_batch,
    )
    return effects.unflatten(1, (-1, n_heads))


@dataclass
class FeatureAttribution:
    """Attribution-patching scores of SAE features: ``(clean - corrupted activation) * d metric / d activation``.

    ``scores`` is ``[batch, rows, d_sae]``, where row ``i`` is model position ``positions[i]`` (the tokens
    the SAE is spliced on).
    """

    scores: Float[Tensor, "batch rows d_sae"]
    positions: Int[Tensor, " rows"]
    clean_acts: Float[Tensor, "batch rows d_sae"]
    corrupted_acts: Float[Tensor, "batch rows d_sae"]

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` (position, feature, total score over the batch) triples with the largest absolute score."""
        total = self.scores.sum(0)
        flat = total.flatten().abs().topk(min(k, total.numel())).indices
        return [
            (int(self.positions[i // total.shape[1]]), int(i % total.shape[1]), float(total.flatten()[i]))
            for i in flat
        ]


def feature_attribution(
    model,
    sae,
    clean_images: Float[Tensor, "batch channels height width"],
    corrupted_images: Float[Tensor, "batch channels height width"],
    metric: Metric,
    hook_name: str | None = None,
    tokens: TokenSpec = None,
) -> FeatureAttribution:
    """Attribution patching over every feature at every token: one clean forward, one corrupted forward and backward.

    The SAE is spliced with the error term, so the corrupted run is the model's own; the gradient is taken with
    respect to the feature activations only (no parameter gradients are accumulated).

    Example:
        >>> attribution = feature_attribution(model, sae, clean, corrupted, metric)
        >>> attribution.top(5)  # [(position, feature, score), ...]
    """
    _check_pair(clean_images, corrupted_images)
    hook_name = hook_name or sae.output_hook_name
    acts_name = f"{hook_name}.hook_sae_acts_post"
    captured: dict[str, Tensor] = {}

    def capture_leaf(acts: Tensor, hook) -> Tensor:
        leaf = acts.detach().requires_grad_(True)
        captured["acts"], captured["positions"] = leaf, hook.ctx["positions"]
        return leaf

    with _spliced(model, sae, hook_name, tokens):
        with torch.no_grad():
            _, cache = model.run_with_cache(clean_images, names_filter=[acts_name])
        with torch.enable_grad():
            value = scalar_metric(metric(model.run_with_hooks(corrupted_images, fwd_hooks=[(acts_name, capture_leaf)])))
            (gradient,) = torch.autograd.grad(value, [captured["acts"]])
    clean_acts, corrupted_acts = cache[acts_name], captured["acts"].detach()
    return FeatureAttribution(
        scores=(clean_acts - corrupted_acts) * gradient,
        positions=captured["positions"],
        clean_acts=clean_acts,
        corrupted_acts=corrupted_acts,
    )


@contextmanager
def _spliced(model, sae, hook_name: str, tokens: TokenSpec):
    """``sae`` attached with the error term at ``hook_name`` (which may differ from the SAE's own) for a block."""
    model.add_sae(sae, hook_name=hook_name, use_error_term=True, tokens=tokens)
    try:
        yield model
    finally:
        if model.acts_to_saes.get(hook_name) is sae:
            model.reset_saes([hook_name])


def ablation_sweep(
    model,
    sae,
    images: Float[Tensor, "batch channels height width"],
    features: Sequence[int],
    metric: Metric,
    hook_name: str | None = None,
    tokens: TokenSpec = None,
    method: str = "auto",
    max_batch: int = 256,
) -> Float[Tensor, " n_features"]:
    """How much ``metric`` changes when each feature is zero-ablated alone (ablated minus clean).

    With the error term spliced, ablating feature ``f`` changes the hook's output by exactly
    ``-a_f · W_dec[f]`` (de-normalised) on the SAE's tokens, so the fast method encodes once and then runs
    only the layers after the hook, batched over features. It applies to ``resid_pre``, ``resid_post`` and
    ``mlp_out`` hooks (a transcoder writing one of them is encoded from its input hook); ``method="naive"``
    (one spliced forward per feature) works at any hook.

    Example:
        >>> effects = ablation_sweep(model, sae, images, features=top_features, metric=metric)  # [64]
    """
    hook_name = hook_name or sae.output_hook_name
    model.check_hook_name(hook_name)
    features = [int(f) for f in features]
    if not features:
        raise ConfigError("features is empty; pass the feature indices to ablate")
    if method not in ("auto", "fast", "naive"):
        raise ConfigError(f"method={method!r} is not one of 'auto', 'fast', 'naive'")
    boundary = additive_boundary(hook_name)
    # A transcoder reads its input hook, which must be computed before the blocks the fast sweep re-runs.
    if sae.is_transcoder and boundary is not None:
        input_stop = stop_layer(sae.hook_name)
        boundary = boundary if input_stop is not None and input_stop <= boundary else None
    if method == "fast" and boundary is None:
        raise HookNameError(
            f"the fast sweep needs an SAE (or a transcoder that writes there) at a resid_pre, resid_post or mlp_out "
            f"hook, not {hook_name!r}; use method='naive'"
        )
    tokens = sae.token_set if tokens is None else tokens
    with torch.no_grad():
        if method == "naive" or boundary is None:
            baseline = scalar_metric(metric(model(images)))
            return _naive_sweep(model, sae, images, features, metric, hook_name, tokens) - baseline
        return _fast_sweep(model, sae, images, features, metric, hook_name, tokens, boundary, max_batch)


def _naive_sweep(model, sae, images, features, metric, hook_name, tokens) -> Tensor:
    acts_name = f"{hook_name}.hook_sae_acts_post"
    values = []
    with _spliced(model, sae, hook_name, tokens):
        for feature in features:
            output = model.run_with_hooks(images, fwd_hooks=[(acts_name, ablate_features([feature]))])
            values.append(scalar_metric(metric(output)))
    return torch.stack(values)


def _fast_sweep(model, sae, images, features, metric, hook_name, tokens, boundary, max_batch) -> Tensor:
    start_layer = boundary
    # Only the blocks before the boundary run on the images; everything after runs from it. The features are
    # encoded from the hook the SAE reads (a transcoder's input hook).
    read = sae.hook_name if sae.is_transcoder else hook_name
    base, cache = model.run_with_cache(images, stop_at_layer=start_layer, names_filter=[read])
    x = cache[read] if read in cache.cache_dict else base  # a resid_pre hook is the boundary itself
    batch, n_pos, _ = x.shape
    baseline = scalar_metric(metric(model(base, start_at_layer=start_layer)))
    selected = TokenSelection.resolve(tokens, n_pos, model.token_layout).mask(batch, x.device)
    # Every token is encoded (the SAE is per-token); only the selected ones are ablated.
    feature_ids = torch.tensor(features, device=x.device)
    acts = sae.encode(x)[..., feature_ids] * selected[..., None]  # [batch, pos, n_features]
    stats = sae.norm_stats(x)
    scale = stats.scale if stats.scale is not None else 1.0
    directions = sae.W_dec[feature_ids].to(x.dtype)  # [n_features, d_in]
    results = []
    chunk = max(1, max_batch // batch)
    for first in range(0, len(features), chunk):
        ids = slice(first, first + chunk)
        # delta[f, b, p] = -a_f(b, p) * W_dec[f] * scale(b, p): the exact change of the spliced output.
        delta = -acts[..., ids].permute(2, 0, 1)[..., None] * directions[ids][:, None, None, :] * scale
        outputs = model((base[None] + delta).flatten(0, 1), start_at_layer=start_layer)
        results.append(metrics_per_variant(outputs, delta.shape[0], metric))
    return torch.cat(results) - baseline
