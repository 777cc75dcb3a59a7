"""Splicing SAEs into a HookedViT: the SAE's reconstruction replaces a hook's activation on chosen tokens.

A splice is a permanent, prepended hook on the target HookPoint, so that (a) TransformerLens's
``reset_hooks()`` leaves it alone, (b) every other hook on that name sees the spliced value, and (c) no
module of the model is replaced: detaching removes one handle and the model is exactly as before. While an
SAE is attached its HookPoints are listed in the model's ``hook_dict`` as ``{hook_name}.{sae_hook}``
(``blocks.9.hook_resid_post.hook_sae_acts_post``), so ``run_with_cache`` and ``run_with_hooks`` reach them.

Each SAE HookPoint records in ``hook.ctx["positions"]`` which model position every row of the SAE's tensors
is (and in ``hook.ctx["n_pos"]`` the sequence length), so interventions can address tokens by position
whatever token set the SAE runs on.

A transcoder is spliced at the hook it predicts (``hook_name_out``): a second, permanent hook at its input
hook (``hook_name``) keeps that activation for the forward pass, and the output hook's activation is replaced
by the transcoder's prediction from it (plus ``true output - clean prediction`` with ``use_error_term``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vit_sae_hooks._tl import add_hook_returning_handle
from vit_sae_hooks.errors import ConfigError, HookNameError, InputShapeError
from vit_sae_hooks.hook_names import activation_shape, hook_layer
from vit_sae_hooks.sae.formats.saelens import SAELensView, is_saelens_sae
from vit_sae_hooks.tokens import TokenLayout, TokenSelection, TokenSpec, on_device

if TYPE_CHECKING:
    from vit_sae_hooks.model.hooked_vit import HookedViT


def spliceable(sae: Any) -> Any:
    """What splicing calls and reads: this library's SAE itself, or a view of a ``sae_lens.SAE``.

    Example:
        >>> spliceable(sae_lens_sae).hook_name
        'blocks.9.hook_resid_post'
    """
    return SAELensView(sae) if is_saelens_sae(sae) else sae


def sae_reads_heads(model: HookedViT, sae: Any, hook_name: str, width: int | None = None) -> tuple[bool, bool]:
    """Whether ``sae`` reads ``hook_name`` with its heads flattened (``[.., head, d]`` as one vector), and
    whether the hook has a token axis; a width that fits neither way is an :class:`InputShapeError`.

    ``width`` is the number of features the SAE exchanges with the hook (default ``sae.d_in``; a transcoder's
    ``d_out`` at its output hook).

    Example:
        >>> sae_reads_heads(model, z_sae, "blocks.3.attn.hook_z")  # an SAE of width n_heads * d_head
        (True, True)
    """
    wanted = sae.d_in if width is None else width
    try:
        trailing, has_positions = activation_shape(model.cfg, hook_name)
    except HookNameError as error:
        raise HookNameError(f"an SAE cannot be spliced at {hook_name!r}: {error}") from error
    flatten_heads = len(trailing) == 2 and wanted == trailing[0] * trailing[1]
    found = trailing[0] * trailing[1] if flatten_heads else trailing[-1]
    if wanted != found:
        what = "reads d_in" if width is None else "exchanges"
        raise InputShapeError(
            f"the SAE {what}={wanted} features but {hook_name!r} has {found} per token (shape [..., "
            f"{', '.join(map(str, trailing))}]); use it at a hook of width {wanted} or use the SAE trained "
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
    # Transcoders: the hook read, how it is read, and its activation in the current forward pass.
    input_hook_name: str | None = None
    input_flatten_heads: bool = False
    input_handle: object = None
    captured: Tensor | None = None

    def __call__(self, activation: Tensor, hook) -> Tensor:
        y = activation.flatten(-2) if self.flatten_heads else activation
        x = y if self.input_hook_name is None else self._take_input(y)
        if not self.has_positions:
            self._set_positions(None, None)
            out = self._apply(x, y)
        else:
            out = self._splice_tokens(x, y)
        return out.unflatten(-1, activation.shape[-2:]) if self.flatten_heads else out

    def capture(self, activation: Tensor, hook) -> None:
        """The transcoder's input hook: keep its activation for the output hook of the same forward pass."""
        self.captured = activation.flatten(-2) if self.input_flatten_heads else activation

    def _take_input(self, y: Tensor) -> Tensor:
        x, self.captured = self.captured, None
        if x is None:
            raise HookNameError(
                f"the transcoder at {self.hook_name!r} reads {self.input_hook_name!r}, which did not run before it "
                "in this forward pass; a transcoder must read a hook that comes earlier in the model."
            )
        if x.shape[:-1] != y.shape[:-1]:
            raise InputShapeError(
                f"the transcoder reads {self.input_hook_name!r} with shape {tuple(x.shape)} and predicts "
                f"{self.hook_name!r} with shape {tuple(y.shape)}; both hooks must have the same tokens."
            )
        return x

    def _apply(self, x: Tensor, y: Tensor) -> Tensor:
        return self.sae(x) if self.input_hook_name is None else self.sae(x, target=y)

    def _splice_tokens(self, x: Tensor, y: Tensor) -> Tensor:
        n_pos = y.shape[1]
        selection = TokenSelection.resolve(self.tokens, n_pos, self.model.token_layout)
        if selection.per_image:
            # The SAE sees every token and the mask picks, per image, where its output goes.
            self._set_positions(torch.arange(n_pos, device=y.device), n_pos)
            mask = selection.mask(y.shape[0], y.device)
            return torch.where(mask[..., None], self._apply(x, y), y)
        self._set_positions(on_device(selection.positions, y.device), n_pos)
        return selection.put(y, self._apply(selection.take(x), selection.take(y)))

    def _set_positions(self, positions: Tensor | None, n_pos: int | None) -> None:
        for hook_point in self.sae.hook_dict.values():
            hook_point.ctx["positions"] = positions
            hook_point.ctx["n_pos"] = n_pos


def attach(
    model: HookedViT, sae: Any, hook_name: str | None, use_error_term: bool, tokens: TokenSpec,
    hook_name_in: str | None = None,
) -> Splice:
    """Attach ``sae`` (this library's SAE or a ``sae_lens.SAE``) to ``model`` (see :meth:`HookedViT.add_sae`).

    The SAE's HookPoints become submodules of the hook they are spliced at, so tools that walk modules
    (nnsight) reach them under the same names as the model's ``hook_dict``. A transcoder is spliced at
    ``hook_name`` (default: its ``hook_name_out``) and reads ``hook_name_in`` (default: its ``hook_name``).

    Example:
        >>> attach(model, sae, None, use_error_term=True, tokens=None)
    """
    original, sae = sae, spliceable(sae)
    transcoder = bool(getattr(sae, "is_transcoder", False))
    if transcoder:
        hook_name, hook_name_in = _transcoder_hooks(model, sae, hook_name, hook_name_in)
    elif hook_name_in is not None:
        raise ConfigError("hook_name_in is for transcoders; this SAE reconstructs the hook it reads (hook_name).")
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
    if transcoder:
        flatten_heads, has_positions = sae_reads_heads(model, sae, hook_name, width=sae.d_out)
        input_flatten_heads, input_has_positions = sae_reads_heads(model, sae, hook_name_in)
        if input_has_positions != has_positions:
            with_axis, without = (hook_name_in, hook_name) if input_has_positions else (hook_name, hook_name_in)
            raise InputShapeError(
                f"the transcoder reads {hook_name_in!r} and predicts {hook_name!r}, but {with_axis!r} has a token axis "
                f"and {without!r} has none, so their token counts differ; pair hooks that cover the same tokens."
            )
    else:
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
    if transcoder:
        splice.input_hook_name, splice.input_flatten_heads = hook_name_in, input_flatten_heads
        # Appended, so the transcoder reads what the model computes there (an SAE spliced at that hook included).
        splice.input_handle = add_hook_returning_handle(model.hook_dict[hook_name_in], splice.capture, is_permanent=True)
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
    if splice.input_hook_name is not None:
        input_point = model.hook_dict[splice.input_hook_name]
        if splice.input_handle in input_point.fwd_hooks:
            input_point.fwd_hooks.remove(splice.input_handle)
        splice.input_handle.hook.remove()
        splice.captured = None
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


def _transcoder_hooks(model: HookedViT, sae: Any, hook_name: str | None, hook_name_in: str | None) -> tuple[str, str]:
    # The hook a transcoder replaces and the hook it reads, both checked before anything is attached.
    hook_out = hook_name or sae.hook_name_out
    hook_in = hook_name_in or sae.hook_name
    if hook_out is None or hook_in is None:
        raise ConfigError(
            f"this transcoder records hook_name={sae.hook_name!r} and hook_name_out={sae.hook_name_out!r}; pass the "
            "missing ones: model.add_sae(tc, hook_name='blocks.L.hook_mlp_out', hook_name_in='blocks.L.ln2.hook_normalized')"
        )
    for name in (hook_in, hook_out):
        model.check_hook_name(name)
    if hook_in == hook_out:
        raise ConfigError(
            f"a transcoder reads one hook and predicts another, but both are {hook_in!r}; splice an SAE to reconstruct "
            "a hook, or pass the hook the transcoder predicts."
        )
    layer_in, layer_out = hook_layer(hook_in), hook_layer(hook_out)
    if layer_in is not None and layer_out is not None and layer_in > layer_out:
        raise ConfigError(
            f"the transcoder reads {hook_in!r} (block {layer_in}) but predicts {hook_out!r} (block {layer_out}), which "
            "the model computes earlier; its input hook must come before its output hook."
        )
    return hook_out, hook_in
