"""Splicing SAEs into a HookedViT: the SAE's reconstruction replaces a hook's activation on chosen tokens.

A splice is a permanent, prepended hook on the target HookPoint, so that (a) TransformerLens's
``reset_hooks()`` leaves it alone, (b) every other hook on that name sees the spliced value, and (c) no
module of the model is replaced: detaching removes one handle and the model is exactly as before. While an
SAE is attached its HookPoints are listed in the model's ``hook_dict`` as ``{hook_name}.{sae_hook}``
(``blocks.9.hook_resid_post.hook_sae_acts_post``), so ``run_with_cache`` and ``run_with_hooks`` reach them.

Each SAE HookPoint records in ``hook.ctx["positions"]`` which model position every row of the SAE's tensors
is (and in ``hook.ctx["n_pos"]`` the sequence length), so interventions can address tokens by position
whatever token set the SAE runs on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vit_sae_hooks._tl import add_hook_returning_handle
from vit_sae_hooks.errors import ConfigError, HookNameError, InputShapeError
from vit_sae_hooks.hook_names import activation_shape
from vit_sae_hooks.sae.formats.saelens import SAELensView, is_saelens_sae
from vit_sae_hooks.tokens import TokenLayout, TokenSelection, TokenSpec

if TYPE_CHECKING:
    from vit_sae_hooks.model.hooked_vit import HookedViT


def spliceable(sae: Any) -> Any:
    """What splicing calls and reads: this library's SAE itself, or a view of a ``sae_lens.SAE``.

    Example:
        >>> spliceable(sae_lens_sae).hook_name
        'blocks.9.hook_resid_post'
    """
    return SAELensView(sae) if is_saelens_sae(sae) else sae


def sae_reads_heads(model: HookedViT, sae: Any, hook_name: str) -> tuple[bool, bool]:
    """Whether ``sae`` reads ``hook_name`` with its heads flattened (``[.., head, d]`` as one vector), and
    whether the hook has a token axis; a width that fits neither way is an :class:`InputShapeError`.

    Example:
        >>> sae_reads_heads(model, z_sae, "blocks.3.attn.hook_z")  # an SAE of width n_heads * d_head
        (True, True)
    """
    try:
        trailing, has_positions = activation_shape(model.cfg, hook_name)
    except HookNameError as error:
        raise HookNameError(f"an SAE cannot be spliced at {hook_name!r}: {error}") from error
    flatten_heads = len(trailing) == 2 and sae.d_in == trailing[0] * trailing[1]
    width = trailing[0] * trailing[1] if flatten_heads else trailing[-1]
    if sae.d_in != width:
        raise InputShapeError(
            f"the SAE reads d_in={sae.d_in} features but {hook_name!r} has {width} per token (shape [..., "
            f"{', '.join(map(str, trailing))}]); use it at a hook of width {sae.d_in} or use the SAE trained "
            f"for this model ({model.cfg.model_name})"
        )
    return flatten_heads, has_positions


@dataclass
class Splice:
    """One SAE attached at one hook: the hook function that swaps in the reconstruction, and its bookkeeping."""

    sae: Any
    hook_name: str
    tokens: TokenSpec
    use_error_term: bool
    flatten_heads: bool
    has_positions: bool
    model: HookedViT
    previous_use_error_term: bool = False
    handle: object = None
    sae_hook_handles: dict[str, tuple[list, list]] = field(default_factory=dict)

    def __call__(self, activation: Tensor, hook) -> Tensor:
        x = activation.flatten(-2) if self.flatten_heads else activation
        if not self.has_positions:
            self._set_positions(None, None)
            out = self.sae(x)
        else:
            out = self._splice_tokens(x)
        return out.unflatten(-1, activation.shape[-2:]) if self.flatten_heads else out

    def _splice_tokens(self, x: Tensor) -> Tensor:
        n_pos = x.shape[1]
        selection = TokenSelection.resolve(self.tokens, n_pos, self.model.token_layout)
        if selection.per_image:
            # The SAE sees every token and the mask picks, per image, where its output goes.
            self._set_positions(torch.arange(n_pos, device=x.device), n_pos)
            mask = selection.mask(x.shape[0], x.device)
            return torch.where(mask[..., None], self.sae(x), x)
        self._set_positions(selection.positions.to(x.device), n_pos)
        return selection.put(x, self.sae(selection.take(x)))

    def _set_positions(self, positions: Tensor | None, n_pos: int | None) -> None:
        for hook_point in self.sae.hook_dict.values():
            hook_point.ctx["positions"] = positions
            hook_point.ctx["n_pos"] = n_pos


def attach(model: HookedViT, sae: Any, hook_name: str | None, use_error_term: bool, tokens: TokenSpec) -> Splice:
    """Attach ``sae`` (this library's SAE or a ``sae_lens.SAE``) to ``model`` (see :meth:`HookedViT.add_sae`).

    The SAE's HookPoints become submodules of the hook they are spliced at, so tools that walk modules
    (nnsight) reach them under the same names as the model's ``hook_dict``.

    Example:
        >>> attach(model, sae, None, use_error_term=True, tokens=None)
    """
    original, sae = sae, spliceable(sae)
    hook_name = hook_name or sae.hook_name
    if hook_name is None:
        raise ConfigError("this SAE records no hook_name; pass hook_name='blocks.L.hook_resid_post' (or similar)")
    model.check_hook_name(hook_name)
    if hook_name in model.acts_to_saes:
        raise ConfigError(
            f"hook {hook_name!r} already has an SAE attached; call model.reset_saes([{hook_name!r}]) first"
        )
    for other in model.acts_to_saes.values():
        if other is original:
            raise ConfigError(
                f"this SAE is already attached at {sae.hook_dict['hook_sae_input'].name.rsplit('.', 1)[0]!r}; "
                "an SAE can be attached at one hook at a time (copy it with copy.deepcopy for a second hook)"
            )
    flatten_heads, has_positions = sae_reads_heads(model, sae, hook_name)
    tokens = sae.token_set if tokens is None else tokens
    if not has_positions and not (isinstance(tokens, str) and tokens == "all"):
        raise ConfigError(f"{hook_name!r} has no token axis, so tokens={tokens!r} cannot apply; use tokens='all'")
    if has_positions:
        TokenSelection.resolve(tokens, model.cfg.n_ctx, TokenLayout.of(model.cfg))
    splice = Splice(
        sae=sae, hook_name=hook_name, tokens=tokens, use_error_term=use_error_term, flatten_heads=flatten_heads,
        has_positions=has_positions, model=model, previous_use_error_term=sae.use_error_term,
    )
    sae.use_error_term = use_error_term
    target = model.hook_dict[hook_name]
    splice.handle = add_hook_returning_handle(target, splice, is_permanent=True, prepend=True)
    for local_name, hook_point in sae.hook_dict.items():
        alias = f"{hook_name}.{local_name}"
        splice.sae_hook_handles[local_name] = (list(hook_point.fwd_hooks), list(hook_point.bwd_hooks))
        hook_point.name = alias
        hook_point.token_layout = model.token_layout
        target.add_module(local_name, hook_point)
        model.hook_dict[alias] = hook_point
        model.mod_dict[alias] = hook_point
    model.acts_to_saes[hook_name] = original
    model._splices[hook_name] = splice
    return splice


def detach(model: HookedViT, hook_name: str) -> None:
    """Remove the SAE attached at ``hook_name`` and every trace of it (handles, aliases, hooks added meanwhile).

    Example:
        >>> detach(model, "blocks.9.hook_resid_post")
    """
    splice: Splice = model._splices.pop(hook_name)
    del model.acts_to_saes[hook_name]
    hook_point = model.hook_dict[hook_name]
    if splice.handle in hook_point.fwd_hooks:
        hook_point.fwd_hooks.remove(splice.handle)
    splice.handle.hook.remove()
    for local_name, sae_hook_point in splice.sae.hook_dict.items():
        del hook_point._modules[local_name]
        before_fwd, before_bwd = splice.sae_hook_handles[local_name]
        for handles, before in ((sae_hook_point.fwd_hooks, before_fwd), (sae_hook_point.bwd_hooks, before_bwd)):
            for handle in [h for h in handles if h not in before]:
                handle.hook.remove()
                handles.remove(handle)
        sae_hook_point.name = local_name
        sae_hook_point.ctx.pop("positions", None)
        sae_hook_point.ctx.pop("n_pos", None)
        del sae_hook_point.token_layout
        alias = f"{hook_name}.{local_name}"
        del model.hook_dict[alias]
        del model.mod_dict[alias]
    splice.sae.use_error_term = splice.previous_use_error_term
