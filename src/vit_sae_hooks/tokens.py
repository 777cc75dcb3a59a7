"""Token sets: which positions of a ViT's token sequence a splice, an edit, a metric or a training run covers.

A sequence is ``[CLS?, registers..., patches...]`` (:class:`TokenLayout`). A token spec is one of

- a named set: ``"all"``, ``"cls"`` (position 0; needs a CLS token) or ``"patches"`` (every position after
  the CLS and register tokens, so registers are never patches);
- a list of positions (negative ones count from the end; order and repeats do not matter) or a ``[pos]``
  boolean mask: the same positions in every image;
- a ``[batch, pos]`` boolean mask: a selection per image;
- ``None``: every token.

:class:`TokenSelection` resolves a spec against a sequence length once and answers every question callers
ask: the ``[batch, pos]`` mask, the selected rows flattened image by image, the rows written back, and which
model position each row of an SAE's tensors is.

Example:
    >>> selection = TokenSelection.resolve("patches", n_pos=50, layout=TokenLayout(n_prefix_tokens=1))
    >>> selection.rows(torch.randn(2, 50, 768)).shape
    torch.Size([98, 768])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vit_sae_hooks.errors import ConfigError, InputShapeError

TokenSpec = str | Sequence[int] | Tensor | None

# The named token sets, in the order the CLIs list them.
TOKEN_SETS: tuple[str, ...] = ("all", "cls", "patches")
TOKEN_SET_DESCRIPTIONS = {"all": "all tokens", "cls": "the CLS token", "patches": "the patch tokens"}


def check_token_set(name: Any, what: str = "token set") -> str:
    """``name`` when it is one of the named token sets; otherwise a :class:`ConfigError` naming ``what``.

    Example:
        >>> check_token_set("patches")
        'patches'
    """
    if not isinstance(name, str) or name not in TOKEN_SETS:
        raise ConfigError(f"{what} {name!r} is not one of {TOKEN_SETS}.")
    return name


@dataclass(frozen=True, eq=False)
class TokenLayout:
    """Where the CLS, register and patch tokens sit in a model's sequence.

    ``grid`` is the patch grid (rows, columns) of the images in the current forward pass, when known. A padded
    batch of images of different sizes (SigLIP 2's NaFlex inputs) has ``grids [batch, 2]`` instead and
    ``valid [batch, pos]``, False on padding: padding tokens belong to no token set. Video has ``frames``
    positions in time; its patch tokens are laid out (time, row, column) when ``frame_major``, else (row,
    column, time); ``"patches"`` covers all of them.

    Example:
        >>> TokenLayout.of(model.cfg)  # DINOv2 with 4 registers, 224 x 224 images
        TokenLayout(n_prefix_tokens=5, has_cls_token=True, grid=(16, 16))
    """

    n_prefix_tokens: int
    has_cls_token: bool = True
    grid: tuple[int, int] | None = None
    grids: Int[Tensor, "batch 2"] | None = None
    valid: Bool[Tensor, "batch pos"] | None = None
    frames: int = 1
    frame_major: bool = True

    @classmethod
    def of(cls, cfg: Any, grid: tuple[int, int] | None = None, frames: int | None = None) -> TokenLayout:
        """The layout of a :class:`~vit_sae_hooks.HookedViTConfig` for images cut into ``grid`` patches and
        clips of ``frames`` time positions (defaults: the checkpoint's native ones).

        Example:
            >>> TokenLayout.of(model.cfg).n_prefix_tokens
            1
        """
        native = tuple(cfg.grid_size) if hasattr(cfg, "grid_size") else None
        return cls(
            n_prefix_tokens=int(cfg.n_prefix_tokens), has_cls_token=bool(cfg.has_cls_token), grid=grid or native,
            frames=frames or int(getattr(cfg, "n_time", 1)),
            frame_major=getattr(cfg, "token_order", "frame_major") == "frame_major",
        )

    def is_patch(self, positions: Int[Tensor, "*shape"]) -> Bool[Tensor, "*shape"]:
        """Which of ``positions`` are patch tokens (not CLS, not registers).

        Example:
            >>> TokenLayout(5).is_patch(torch.tensor([0, 4, 5]))
            tensor([False, False,  True])
        """
        return positions >= self.n_prefix_tokens

    def patch_index(self, positions: Int[Tensor, "*shape"]) -> Int[Tensor, "*shape"]:
        """The index on the patch grid (row-major) of patch-token ``positions`` (within its frame, for video).

        Example:
            >>> TokenLayout(1).patch_index(torch.tensor([1, 2]))
            tensor([0, 1])
        """
        return self.patch_coordinates(positions)[1]

    def patch_coordinates(self, positions: Int[Tensor, "*shape"]) -> tuple[Int[Tensor, "*shape"], Int[Tensor, "*shape"]]:
        """``(frame, index on that frame's patch grid)`` of patch-token ``positions``.

        Example:
            >>> TokenLayout(1, grid=(2, 2), frames=3).patch_coordinates(torch.tensor([1, 5]))
            (tensor([0, 1]), tensor([0, 0]))
        """
        flat = positions - self.n_prefix_tokens
        if self.frames == 1:
            return torch.zeros_like(flat), flat
        if self.frame_major:
            per_frame = self.grid[0] * self.grid[1]
            return flat // per_frame, flat % per_frame
        return flat % self.frames, flat // self.frames

    def frame_positions(self, frame: int) -> Int[Tensor, " patches"]:
        """The positions of the patch tokens of time position ``frame``, in grid order (for per-frame masks).

        Example:
            >>> TokenLayout(1, grid=(2, 2), frames=3, frame_major=False).frame_positions(1)
            tensor([ 2,  5,  8, 11])
        """
        if not 0 <= frame < self.frames:
            raise ConfigError(f"frame {frame} is out of range: this layout has {self.frames} time positions")
        per_frame = self.grid[0] * self.grid[1]
        grid_index = torch.arange(per_frame)
        flat = frame * per_frame + grid_index if self.frame_major else grid_index * self.frames + frame
        return flat + self.n_prefix_tokens


@dataclass(frozen=True)
class TokenSelection:
    """The tokens a spec selects in sequences of ``n_pos`` tokens: the same positions in every image, or a
    ``[batch, pos]`` mask.

    ``where`` is a ``slice`` (named sets), a LongTensor of positions, or a ``[batch, pos]`` boolean mask.

    Example:
        >>> TokenSelection.resolve("cls", 50, TokenLayout(1)).positions
        tensor([0])
    """

    spec: Any
    n_pos: int
    where: slice | Int[Tensor, " n_selected"] | Bool[Tensor, "batch pos"]

    @classmethod
    def resolve(cls, tokens: TokenSpec, n_pos: int, layout: TokenLayout) -> TokenSelection:
        """Check ``tokens`` against a sequence of ``n_pos`` tokens laid out as ``layout``.

        Padding tokens (``layout.valid``) are left out of every selection, which makes it per image.

        Example:
            >>> TokenSelection.resolve([0, -1], 50, TokenLayout(1)).positions
            tensor([ 0, 49])
        """
        selection = cls(tokens, n_pos, _resolve(tokens, n_pos, layout))
        if layout.valid is None:
            return selection
        if layout.valid.shape[-1] != n_pos:
            raise InputShapeError(f"the padding mask covers {layout.valid.shape[-1]} tokens, the sequence has {n_pos}")
        valid = layout.valid.cpu()
        return cls(tokens, n_pos, selection.mask(valid.shape[0]) & valid)

    @property
    def per_image(self) -> bool:
        """Whether the selection differs between images (a ``[batch, pos]`` mask)."""
        return isinstance(self.where, Tensor) and self.where.dtype == torch.bool

    @property
    def selects_all(self) -> bool:
        """Whether every token is selected (so rows are the sequence itself)."""
        return isinstance(self.where, slice) and self.where == slice(None)

    @property
    def positions(self) -> Int[Tensor, " n_selected"]:
        """The selected positions, in order (for selections that are the same in every image).

        Example:
            >>> TokenSelection.resolve("patches", 5, TokenLayout(1)).positions
            tensor([1, 2, 3, 4])
        """
        if self.per_image:
            raise ConfigError("a per-image [batch, pos] token mask has no single list of positions; use .mask(batch)")
        return torch.arange(self.n_pos)[self.where]

    def mask(self, batch: int, device: torch.device | str | None = None) -> Bool[Tensor, "batch pos"]:
        """The selection as a ``[batch, pos]`` boolean mask.

        Example:
            >>> TokenSelection.resolve("cls", 3, TokenLayout(1)).mask(2)
            tensor([[ True, False, False],
                    [ True, False, False]])
        """
        if self.per_image:
            if self.where.shape[0] not in (1, batch):
                raise InputShapeError(
                    f"the token mask has {self.where.shape[0]} rows but the batch has {batch} images; "
                    "pass one [pos] row per image (or a [pos] mask for all of them)"
                )
            return on_device(self.where, device).expand(batch, -1)
        selected = torch.zeros(self.n_pos, dtype=torch.bool, device=device)
        selected[self.where if isinstance(self.where, slice) else on_device(self.where, device)] = True
        return selected.expand(batch, -1)

    def take(self, x: Float[Tensor, "batch pos *feature"]) -> Float[Tensor, "batch n_selected *feature"]:
        """The selected token rows of ``x`` along dim 1 (same positions in every image).

        Example:
            >>> TokenSelection.resolve("cls", 50, TokenLayout(1)).take(resid).shape  # [batch, 1, d_model]
        """
        if self.per_image:
            raise ConfigError("take() needs the same positions in every image; use rows() for a [batch, pos] mask")
        return take_rows(x, self.where)

    def put(self, x: Float[Tensor, "batch pos *feature"], rows: Tensor) -> Float[Tensor, "batch pos *feature"]:
        """``x`` with the selected rows replaced by ``rows [batch, n_selected, ...]``, out of place.

        Example:
            >>> spliced = selection.put(resid, sae(selection.take(resid)))
        """
        if self.per_image:
            raise ConfigError("put() needs the same positions in every image; use replace_rows() for a mask")
        return put_rows(x, self.where, rows)

    def rows(self, x: Float[Tensor, "batch pos *feature"]) -> Float[Tensor, "n_rows ..."]:
        """The selected tokens of ``x`` flattened to rows, image by image, position by position.

        Example:
            >>> TokenSelection.resolve("patches", 50, TokenLayout(1)).rows(torch.randn(2, 50, 8)).shape
            torch.Size([98, 8])
        """
        if self.per_image:
            return x[self.mask(x.shape[0], x.device)]
        return self.take(x).flatten(0, 1)

    def replace_rows(self, x: Float[Tensor, "batch pos *feature"], rows: Float[Tensor, "n_rows ..."]) -> Tensor:
        """``x`` with the rows :meth:`rows` returned replaced by ``rows``, out of place (autograd sees both).

        Example:
            >>> zeroed = selection.replace_rows(resid, torch.zeros_like(selection.rows(resid)))
        """
        rows = rows.to(x.dtype)
        if self.per_image:
            batch_index, position_index = self.mask(x.shape[0], x.device).nonzero(as_tuple=True)
            return x.index_put((batch_index, position_index), rows)
        return self.put(x, rows.unflatten(0, (x.shape[0], -1)))

    def row_positions(self, batch: int, device: torch.device | str | None = None) -> Int[Tensor, "n_rows 2"]:
        """``(image, position)`` of every row of :meth:`rows`, in the same order.

        Example:
            >>> TokenSelection.resolve("cls", 50, TokenLayout(1)).row_positions(2)
            tensor([[0, 0],
                    [1, 0]])
        """
        return self.mask(batch, device).nonzero()


def _resolve(tokens: TokenSpec, n_pos: int, layout: TokenLayout) -> slice | Tensor:
    if tokens is None or (isinstance(tokens, str) and tokens == "all"):
        return slice(None)
    if isinstance(tokens, str):
        if tokens == "cls":
            if not layout.has_cls_token:
                raise ConfigError("tokens='cls' needs a model with a CLS token; this model has none (e.g. SigLIP)")
            return slice(0, 1)
        if tokens == "patches":
            return slice(layout.n_prefix_tokens, None)
        raise ConfigError(f"tokens={tokens!r} is not one of {TOKEN_SETS}, a list of positions or a boolean mask")
    try:
        mask_or_positions = torch.as_tensor(tokens)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"tokens={tokens!r} is not one of {TOKEN_SETS}, a list of positions or a boolean mask ({error})"
        ) from error
    if mask_or_positions.dtype == torch.bool:
        if mask_or_positions.ndim not in (1, 2) or mask_or_positions.shape[-1] != n_pos:
            raise InputShapeError(
                f"a token mask must have shape [pos] or [batch, pos] with pos={n_pos}, got "
                f"{tuple(mask_or_positions.shape)}"
            )
        return mask_or_positions.nonzero().flatten() if mask_or_positions.ndim == 1 else mask_or_positions
    if mask_or_positions.numel() and (mask_or_positions.is_floating_point() or mask_or_positions.is_complex()):
        raise ConfigError(f"token positions must be integers, got {mask_or_positions.dtype}: {tokens!r}")
    positions = mask_or_positions.long().flatten().cpu()
    if positions.numel() and (positions.min() < -n_pos or positions.max() >= n_pos):
        raise InputShapeError(f"token positions {positions.tolist()} are out of range for {n_pos} tokens")
    # A selection is a set of tokens, in sequence order: [3, 1, -1] and [1, 3, 4] in 5 tokens are the same.
    return torch.unique(positions % n_pos)


def on_device(index: Tensor, device: torch.device | str | None) -> Tensor:
    """A token index or mask (kept on the CPU) on ``device``, copied without blocking: a blocking copy would make
    every CUDA forward that selects tokens wait for the GPU.

    Example:
        >>> positions = on_device(selection.positions, resid.device)
    """
    return index.to(device, non_blocking=True)


def take_rows(x: Float[Tensor, "batch pos *feature"], where: slice | Tensor) -> Tensor:
    """The token rows ``where`` (a slice or a LongTensor of positions) selects along dim 1.

    Example:
        >>> cls_rows = take_rows(resid, slice(0, 1))  # [batch, 1, d_model]
    """
    return x[:, where] if isinstance(where, slice) else x.index_select(1, on_device(where, x.device))


def put_rows(x: Float[Tensor, "batch pos *feature"], where: slice | Tensor, rows: Tensor) -> Tensor:
    """``x`` with the token rows at ``where`` replaced by ``rows``, out of place (so autograd sees both).

    Example:
        >>> spliced = put_rows(resid, slice(1, None), sae(take_rows(resid, slice(1, None))))
    """
    rows = rows.to(x.dtype)
    if not isinstance(where, slice):
        return x.index_copy(1, on_device(where, x.device), rows)
    start, stop, step = where.indices(x.shape[1])
    if step != 1:
        return x.index_copy(1, torch.arange(start, stop, step, device=x.device), rows)
    if (start, stop) == (0, x.shape[1]):
        return rows
    return torch.cat([x[:, :start], rows, x[:, stop:]], dim=1)


def select_tokens(
    activations: Float[Tensor, "batch pos d"] | Float[Tensor, "batch d"],
    token_set: str,
    n_prefix_tokens: int,
    has_cls_token: bool = True,
    hook_name: str = "the hook",
    valid: Bool[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "tokens d"]:
    """The rows of one hook's activations that belong to the named ``token_set``, flattened image by image.

    Activations without a token axis (``[batch, d]``, e.g. ``hook_pooled``) only take the token set ``"all"``.
    ``valid`` (a padded NaFlex batch's ``TokenLayout.valid``) leaves the padding out of every set.

    Example:
        >>> select_tokens(torch.randn(2, 50, 768), "patches", n_prefix_tokens=1).shape
        torch.Size([98, 768])
    """
    check_token_set(token_set)
    if activations.ndim == 2:
        if token_set != "all":
            raise ConfigError(
                f"{hook_name} has one vector per image (shape {tuple(activations.shape)}), so token set "
                f"{token_set!r} does not apply; use token set 'all'."
            )
        return activations
    if activations.ndim != 3:
        raise InputShapeError(
            f"{hook_name} has shape {tuple(activations.shape)}; an SAE reads [batch, pos, d] or [batch, d] "
            "activations. Pick a hook such as 'blocks.L.hook_resid_post', 'blocks.L.hook_mlp_out' or 'blocks.L.mlp.hook_post'."
        )
    layout = TokenLayout(n_prefix_tokens, has_cls_token, valid=valid)
    return TokenSelection.resolve(token_set, activations.shape[1], layout).rows(activations)
