"""Splicing SAEs into a HookedViT: the SAE's reconstruction replaces a hook's activation on chosen tokens.

A splice is a permanent, prepended hook on the target HookPoint, so that (a) TransformerLens's
``reset_hooks()`` leaves it alone, (b) every other hook on that name sees the spliced value, and (c) no
module of the model is replaced: detaching removes one handle and the model is exactly as before. While an
SAE is attached its HookPoints are listed in the model's ``hook_dict`` as ``{hook_name}.{sae_hook}``
(``blocks.9.hook_resid_post.hook_sae_acts_post``), so ``run_with_cache`` and ``run_with_hooks`` reach them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vit_sae_hooks.errors import ConfigError, HookNameError, InputShapeError

if TYPE_CHECKING:
    from vit_sae_hooks.model.hooked_vit import HookedViT
    from vit_sae_hooks.sae import SAE

TokenSpec = Union[str, Sequence[int], Tensor, None]

TOKEN_SET_NAMES = ("all", "cls", "patches")


def resolve_positions(
    tokens: TokenSpec, n_pos: int, n_prefix_tokens: int, has_cls_token: bool
) -> slice | Tensor | Bool[Tensor, "batch pos"]:
    """Which positions ``tokens`` selects in a sequence of ``n_pos`` tokens.

    Returns a ``slice`` (for ``"all"``, ``"cls"``, ``"patches"``), a LongTensor of positions (for a list of
    ints or a ``[pos]`` boolean mask), or a ``[batch, pos]`` boolean mask (per-image selections).

    Example:
        >>> resolve_positions("patches", 50, 1, True)
        slice(1, None, None)
    """
    if tokens is None or (isinstance(tokens, str) and tokens == "all"):
        return slice(None)
    if isinstance(tokens, str):
        if tokens == "cls":
            if not has_cls_token:
                raise ConfigError("tokens='cls' needs a model with a CLS token; this model has none (e.g. SigLIP)")
            return slice(0, 1)
        if tokens == "patches":
            return slice(n_prefix_tokens, None)
        raise ConfigError(f"tokens={tokens!r} is not one of {TOKEN_SET_NAMES}, a list of positions or a boolean mask")
    mask_or_positions = torch.as_tensor(tokens)
    if mask_or_positions.dtype == torch.bool:
        if mask_or_positions.shape[-1] != n_pos or mask_or_positions.ndim not in (1, 2):
            raise InputShapeError(
                f"a token mask must have shape [pos] or [batch, pos] with pos={n_pos}, got "
                f"{tuple(mask_or_positions.shape)}"
            )
        return mask_or_positions.nonzero().flatten() if mask_or_positions.ndim == 1 else mask_or_positions
    positions = mask_or_positions.long().flatten()
    if positions.numel() and (positions.min() < -n_pos or positions.max() >= n_pos):
        raise InputShapeError(f"token positions {positions.tolist()} are out of range for {n_pos} tokens")
    return positions % n_pos


def take_rows(x: Float[Tensor, "batch pos *feature"], where: slice | Tensor) -> Tensor:
    """The token rows ``where`` (a slice or positions from :func:`resolve_positions`) selects along dim 1.

    Example:
        >>> cls_rows = take_rows(resid, slice(0, 1))  # [batch, 1, d_model]
    """
    return x[:, where] if isinstance(where, slice) else x.index_select(1, where.to(x.device))


def put_rows(x: Float[Tensor, "batch pos *feature"], where: slice | Tensor, rows: Tensor) -> Tensor:
    """``x`` with the token rows at ``where`` replaced by ``rows``, out of place (so autograd sees both).

    Example:
        >>> spliced = put_rows(resid, slice(1, None), sae(take_rows(resid, slice(1, None))))
    """
    rows = rows.to(x.dtype)
    if not isinstance(where, slice):
        return x.index_copy(1, where.to(x.device), rows)
    start, stop, step = where.indices(x.shape[1])
    if step != 1:
        return x.index_copy(1, torch.arange(start, stop, step, device=x.device), rows)
    if (start, stop) == (0, x.shape[1]):
        return rows
    return torch.cat([x[:, :start], rows, x[:, stop:]], dim=1)


@dataclass
class Splice:
    """One SAE attached at one hook: the hook function that swaps in the reconstruction, and its bookkeeping."""

    sae: SAE
    hook_name: str
    tokens: TokenSpec
    use_error_term: bool
    flatten_heads: bool
    has_positions: bool
    n_prefix_tokens: int
    has_cls_token: bool
    previous_use_error_term: bool = False
    handle: object = None
    sae_hook_handles: dict[str, tuple[list, list]] = field(default_factory=dict)

    def __call__(self, activation: Tensor, hook) -> Tensor:
        x = activation.flatten(-2) if self.flatten_heads else activation
        if not self.has_positions:
            self._set_positions(None)
            out = self.sae(x)
        else:
            out = self._splice_tokens(x)
        return out.unflatten(-1, activation.shape[-2:]) if self.flatten_heads else out

    def _splice_tokens(self, x: Tensor) -> Tensor:
        n_pos = x.shape[1]
        where = resolve_positions(self.tokens, n_pos, self.n_prefix_tokens, self.has_cls_token)
        all_positions = torch.arange(n_pos, device=x.device)
        if isinstance(where, Tensor) and where.dtype == torch.bool:
            # [batch, pos]: the SAE sees every token and the mask picks, per image, where its output goes.
            self._set_positions(all_positions)
            return torch.where(where.to(x.device)[..., None], self.sae(x), x)
        self._set_positions(all_positions[where])
        return put_rows(x, where, self.sae(take_rows(x, where)))

    def _set_positions(self, positions: Tensor | None) -> None:
        # Interventions read which model positions the rows of the SAE's tensors are (see interventions.py).
        for hook_point in self.sae.hook_dict.values():
            hook_point.ctx["positions"] = positions


def _hook_trailing_shape(model: HookedViT, hook_name: str) -> tuple[tuple[int, ...], bool]:
    """The trailing (feature) shape of a hook's activation and whether it has a position axis."""
    cfg = model.cfg
    leaf = hook_name.rsplit(".", 1)[-1]
    if leaf in ("hook_attn_scores", "hook_pattern"):
        raise HookNameError(f"an SAE cannot be spliced at {hook_name!r}: attention patterns have no feature axis")
    if leaf == "hook_scale":
        return (1,), "ln_final" not in hook_name or not cfg.final_ln_after_pool
    if leaf in ("hook_q", "hook_k", "hook_v", "hook_z"):
        return (cfg.n_heads, cfg.d_head), True
    if leaf == "hook_result":
        return (cfg.n_heads, cfg.d_model), True
    if leaf in ("hook_pre", "hook_pre_linear", "hook_post"):
        return (cfg.d_mlp,), not hook_name.startswith("pool.")
    if leaf == "hook_output":
        return (cfg.d_out,), False
    if leaf == "hook_pooled" or (hook_name.startswith("ln_final") and cfg.final_ln_after_pool):
        return (cfg.d_model,), False
    return (cfg.d_model,), not hook_name.startswith("pool.")


def attach(model: HookedViT, sae: SAE, hook_name: str | None, use_error_term: bool, tokens: TokenSpec) -> Splice:
    """Attach ``sae`` to ``model`` (see :meth:`HookedViT.add_sae`)."""
    hook_name = hook_name or sae.hook_name
    if hook_name is None:
        raise ConfigError("this SAE records no hook_name; pass hook_name='blocks.L.hook_resid_post' (or similar)")
    model.check_hook_name(hook_name)
    if hook_name in model.acts_to_saes:
        raise ConfigError(
            f"hook {hook_name!r} already has an SAE attached; call model.reset_saes([{hook_name!r}]) first"
        )
    for other in model.acts_to_saes.values():
        if other is sae:
            raise ConfigError(
                f"this SAE is already attached at {sae.hook_dict['hook_sae_input'].name.rsplit('.', 1)[0]!r}; "
                "an SAE can be attached at one hook at a time (copy it with copy.deepcopy for a second hook)"
            )
    trailing, has_positions = _hook_trailing_shape(model, hook_name)
    flatten_heads = len(trailing) == 2 and sae.d_in == trailing[0] * trailing[1]
    width = trailing[0] * trailing[1] if flatten_heads else trailing[-1]
    if sae.d_in != width:
        raise InputShapeError(
            f"the SAE reads d_in={sae.d_in} features but {hook_name!r} has {width} per token (shape [..., "
            f"{', '.join(map(str, trailing))}]); attach it to a hook of width {sae.d_in} or use the SAE trained "
            f"for this model ({model.cfg.model_name})"
        )
    tokens = sae.token_set if tokens is None else tokens
    if not has_positions and not (isinstance(tokens, str) and tokens == "all"):
        raise ConfigError(f"{hook_name!r} has no token axis, so tokens={tokens!r} cannot apply; use tokens='all'")
    if has_positions:
        resolve_positions(tokens, model.cfg.n_ctx, model.cfg.n_prefix_tokens, model.cfg.has_cls_token)
    splice = Splice(
        sae=sae, hook_name=hook_name, tokens=tokens, use_error_term=use_error_term, flatten_heads=flatten_heads,
        has_positions=has_positions, n_prefix_tokens=model.cfg.n_prefix_tokens, has_cls_token=model.cfg.has_cls_token,
        previous_use_error_term=sae.use_error_term,
    )
    sae.use_error_term = use_error_term
    splice.handle = model.hook_dict[hook_name].add_hook(splice, dir="fwd", is_permanent=True, prepend=True)
    for local_name, hook_point in sae.hook_dict.items():
        alias = f"{hook_name}.{local_name}"
        splice.sae_hook_handles[local_name] = (list(hook_point.fwd_hooks), list(hook_point.bwd_hooks))
        hook_point.name = alias
        hook_point.n_prefix_tokens = model.cfg.n_prefix_tokens
        model.hook_dict[alias] = hook_point
        model.mod_dict[alias] = hook_point
    model.acts_to_saes[hook_name] = sae
    model._splices[hook_name] = splice
    return splice


def detach(model: HookedViT, hook_name: str) -> None:
    """Remove the SAE attached at ``hook_name`` and every trace of it (handles, aliases, hooks added meanwhile)."""
    splice: Splice = model._splices.pop(hook_name)
    del model.acts_to_saes[hook_name]
    hook_point = model.hook_dict[hook_name]
    if splice.handle in hook_point.fwd_hooks:
        hook_point.fwd_hooks.remove(splice.handle)
    splice.handle.hook.remove()
    for local_name, sae_hook_point in splice.sae.hook_dict.items():
        before_fwd, before_bwd = splice.sae_hook_handles[local_name]
        for handles, before in ((sae_hook_point.fwd_hooks, before_fwd), (sae_hook_point.bwd_hooks, before_bwd)):
            for handle in [h for h in handles if h not in before]:
                handle.hook.remove()
                handles.remove(handle)
        sae_hook_point.name = local_name
        sae_hook_point.ctx.pop("positions", None)
        del sae_hook_point.n_prefix_tokens
        alias = f"{hook_name}.{local_name}"
        del model.hook_dict[alias]
        del model.mod_dict[alias]
    splice.sae.use_error_term = splice.previous_use_error_term
