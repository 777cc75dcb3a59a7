"""Feature interventions as TransformerLens hook functions: ablate, set, scale, clamp and steer.

Feature-level helpers go on an attached SAE's ``{hook_name}.hook_sae_acts_post`` hook; :func:`steer` goes on
the model hook itself. Each takes ``tokens`` in model positions (``"cls"``, ``"patches"``, a list of
positions, a ``[pos]`` or ``[batch, pos]`` boolean mask; None = every token the SAE sees). The splice records
in ``hook.ctx["positions"]`` which model position each row of the SAE's tensors is, and every hook point of a
HookedViT (and of an attached SAE) knows its token layout, so these work whatever token set the SAE runs on.

Example:
    >>> acts = "blocks.9.hook_resid_post.hook_sae_acts_post"
    >>> model.run_with_saes(images, saes=[sae], use_error_term=True,
    ...                     fwd_hooks=[(acts, ablate_features([12, 40], tokens="cls"))])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.tokens import TokenLayout, TokenSelection, TokenSpec

HookFn = Callable[[Tensor, object], Tensor]


def _selected_rows(acts: Float[Tensor, "*batch rows d"], hook, tokens: TokenSpec) -> Bool[Tensor, "*batch rows"] | None:
    """Which rows (dim -2) of ``acts`` ``tokens`` selects, as a mask broadcastable to ``acts[..., 0]``; None for all."""
    if tokens is None or (isinstance(tokens, str) and tokens == "all"):
        return None
    if acts.ndim < 2:
        raise ConfigError(f"tokens={tokens!r} needs activations with a token axis; this hook gives {tuple(acts.shape)}")
    ctx = getattr(hook, "ctx", {})
    positions, n_pos = ctx.get("positions"), ctx.get("n_pos")
    n_rows = acts.shape[-2]
    if positions is None:  # the SAE runs outside a splice (or on the model hook itself): rows are positions
        positions, n_pos = torch.arange(n_rows, device=acts.device), n_rows
    layout = getattr(hook, "token_layout", None)
    if layout is None:
        if isinstance(tokens, str) and tokens == "patches":
            raise ConfigError(
                f"tokens='patches' needs to know the prefix length at hook {getattr(hook, 'name', None)!r}; "
                "pass the patch positions explicitly"
            )
        layout = TokenLayout(n_prefix_tokens=1)
    batch = acts.shape[0] if acts.ndim > 2 else 1
    mask = TokenSelection.resolve(tokens, n_pos, layout).mask(batch, acts.device)
    selected = mask[:, positions.to(acts.device)]
    return selected if acts.ndim > 2 else selected[0]


def _edit_features(
    features: Sequence[int], tokens: TokenSpec, edit: Callable[[Tensor, Tensor], Tensor]
) -> HookFn:
    feature_ids = torch.as_tensor(list(features), dtype=torch.long)
    if feature_ids.ndim != 1 or feature_ids.numel() == 0:
        raise ConfigError(f"features must be a non-empty list of feature indices, got {features!r}")

    def hook_fn(acts: Float[Tensor, "*batch rows d_sae"], hook) -> Tensor:
        ids = feature_ids.to(acts.device)
        if ids.max() >= acts.shape[-1] or ids.min() < -acts.shape[-1]:
            raise ConfigError(f"feature ids {features!r} are out of range for an SAE with {acts.shape[-1]} features")
        rows = _selected_rows(acts, hook, tokens)
        current = acts[..., ids]
        new = edit(current, ids).to(acts.dtype)
        if rows is not None:
            new = torch.where(rows[..., None], new, current)
        edited = acts.clone()
        edited[..., ids] = new
        return edited

    return hook_fn


def ablate_features(
    features: Sequence[int],
    mode: str = "zero",
    value: float | None = None,
    mean: Float[Tensor, " d_sae"] | None = None,
    tokens: TokenSpec = None,
) -> HookFn:
    """A hook for ``hook_sae_acts_post`` that zeroes, mean-ablates or sets ``features`` on ``tokens``.

    ``mode``: ``"zero"``; ``"mean"`` (``mean[f]`` from a ``[d_sae]`` vector, e.g. the dataset mean of the
    activations); ``"value"`` (the constant ``value``).

    Example:
        >>> hook = ablate_features([5, 9], mode="mean", mean=mean_acts, tokens="patches")
    """
    if mode == "zero":
        return _edit_features(features, tokens, lambda current, ids: torch.zeros_like(current))
    if mode == "mean":
        if mean is None:
            raise ConfigError("mode='mean' needs mean=<[d_sae] tensor of mean feature activations>")
        return _edit_features(features, tokens, lambda current, ids: mean.to(current.device)[ids].expand_as(current))
    if mode == "value":
        if value is None:
            raise ConfigError("mode='value' needs value=<the activation to set>")
        return set_features(features, value, tokens)
    raise ConfigError(f"mode={mode!r} is not one of 'zero', 'mean', 'value'")


def set_features(features: Sequence[int], value: float, tokens: TokenSpec = None) -> HookFn:
    """A hook for ``hook_sae_acts_post`` that sets ``features`` to ``value`` on ``tokens``.

    Example:
        >>> hook = set_features([7], 20.0, tokens="cls")
    """
    return _edit_features(features, tokens, lambda current, ids: torch.full_like(current, float(value)))


def scale_features(features: Sequence[int], factor: float, tokens: TokenSpec = None) -> HookFn:
    """A hook for ``hook_sae_acts_post`` that multiplies ``features`` by ``factor`` on ``tokens``.

    Example:
        >>> hook = scale_features([7], 3.0)
    """
    return _edit_features(features, tokens, lambda current, ids: current * factor)


def clamp_features(
    features: Sequence[int], minimum: float | None = None, maximum: float | None = None, tokens: TokenSpec = None
) -> HookFn:
    """A hook for ``hook_sae_acts_post`` that clamps ``features`` into ``[minimum, maximum]`` on ``tokens``.

    Example:
        >>> hook = clamp_features([7], maximum=1.0)
    """
    if minimum is None and maximum is None:
        raise ConfigError("clamp_features needs minimum, maximum or both")
    return _edit_features(features, tokens, lambda current, ids: current.clamp(min=minimum, max=maximum))


def steer(sae, feature: int, alpha: float, tokens: TokenSpec = None) -> HookFn:
    """A hook for the model hook ``sae`` reads (e.g. ``blocks.9.hook_resid_post``) adding ``alpha * W_dec[feature]``.

    Works with or without the SAE spliced in. ``tokens`` are model positions (None: all).

    Example:
        >>> model.run_with_hooks(images, fwd_hooks=[(sae.hook_name, steer(sae, 123, alpha=8.0, tokens="patches"))])
    """
    if not 0 <= feature < sae.d_sae:
        raise ConfigError(f"feature {feature} is out of range for an SAE with {sae.d_sae} features")
    direction = sae.W_dec[feature].detach()

    def hook_fn(activation: Float[Tensor, "batch pos d_in"], hook) -> Tensor:
        if activation.shape[-1] != direction.shape[-1]:
            raise ConfigError(
                f"steering direction has width {direction.shape[-1]} but {hook.name!r} has {activation.shape[-1]}"
            )
        rows = _selected_rows(activation, hook, tokens)
        step = (alpha * direction).to(activation.device, activation.dtype)
        if rows is None:
            return activation + step
        return activation + rows[..., None].to(activation.dtype) * step

    return hook_fn
