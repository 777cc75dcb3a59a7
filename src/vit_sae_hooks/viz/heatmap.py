"""A feature's activation per token and over an image's patch grid, for any HookedViT and SAE.

The SAE is spliced in at its hook for one forward pass (stopped after the hook's block), and its
``hook_sae_acts_post`` is read there. The splice records which model position each row of the SAE's
activations is, so CLS-only, patch-only and all-token SAEs, register tokens and models without a CLS token
(SigLIP) all come out right: rows at positions ``>= n_prefix_tokens`` are patches, the rest are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_sae_hooks.checks import described_shape
from vit_sae_hooks.errors import ConfigError, InputShapeError
from vit_sae_hooks.hook_names import stop_layer
from vit_sae_hooks.tokens import TokenLayout

if TYPE_CHECKING:
    from vit_sae_hooks.model import HookedViT
    from vit_sae_hooks.sae import SAE

FeatureSpec = int | Sequence[int] | Tensor


def feature_ids(features: FeatureSpec, sae: SAE) -> Int[Tensor, " n_features"]:
    """``features`` as a checked 1-d LongTensor of distinct latent indices of ``sae``.

    Example:
        >>> feature_ids([3, 17], sae)
        tensor([ 3, 17])
    """
    if isinstance(features, bool) or not isinstance(features, (int, Sequence, Tensor)):
        raise ConfigError(f"features must be a feature index or a list of them, got {features!r}")
    ids = torch.as_tensor(features).flatten()
    if ids.numel() == 0 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ConfigError(f"features must be one or more integer feature indices, got {features!r}")
    ids = ids.long()
    bad = ids[(ids < 0) | (ids >= sae.d_sae)]
    if bad.numel():
        raise ConfigError(
            f"feature {int(bad[0])} is out of range for an SAE with d_sae={sae.d_sae} features; use indices "
            f"0-{sae.d_sae - 1}"
        )
    if ids.unique().numel() != ids.numel():
        raise ConfigError(f"features {ids.tolist()} repeat an index; list each feature once")
    return ids


def patch_grid_size(model: HookedViT, images: Tensor) -> tuple[int, int]:
    """(rows, columns) of patches that ``images [.., H, W]`` are cut into by ``model``.

    Example:
        >>> patch_grid_size(model, torch.zeros(1, 3, 224, 224))  # CLIP B/32
        (7, 7)
    """
    patch_height, patch_width = model.cfg.patch_size
    return images.shape[-2] // patch_height, images.shape[-1] // patch_width


def token_activations(
    model: HookedViT, sae: SAE, images: Float[Tensor, "batch channels height width"], features: FeatureSpec,
    **model_inputs: Any,
) -> tuple[Float[Tensor, "batch rows n_features"], Int[Tensor, " rows"] | None]:
    """The activations of ``features`` on every token the SAE reads, and the model position of each row.

    Rows are the SAE's tokens (``sae.token_set``); positions are None when the hook has no token axis
    (e.g. ``hook_pooled``), and then there is one row per image. Runs without gradients. ``model_inputs`` go to
    the model with ``images`` (SigLIP 2's ``pixel_attention_mask`` and ``spatial_shapes``).

    Example:
        >>> acts, positions = token_activations(model, sae, images, [3, 17])  # acts: [batch, 50, 2]
    """
    ids = feature_ids(features, sae)
    # Where the spliced SAE's hooks appear: a transcoder's output hook.
    hook_name = getattr(sae, "output_hook_name", sae.hook_name)
    captured: dict[str, Any] = {}

    def capture(acts: Tensor, hook: Any) -> None:
        # Select the features here, so the dense [batch, rows, d_sae] tensor dies with the forward pass.
        selected = acts[..., ids.to(acts.device)]
        captured["acts"] = selected if selected.ndim == 3 else selected[:, None]
        captured["positions"] = hook.ctx.get("positions")

    stop_at = stop_layer(hook_name) if hook_name is not None else None
    # Nothing after the hook's block changes the SAE's activations, so the rest of the model is skipped.
    stop = {"stop_at_layer": stop_at} if stop_at is not None else {"return_type": None}
    with torch.no_grad(), model.saes([sae], use_error_term=False):
        model.run_with_hooks(images, fwd_hooks=[(f"{hook_name}.hook_sae_acts_post", capture)], **stop, **model_inputs)
    positions = captured["positions"]
    return captured["acts"], (positions.cpu() if positions is not None else None)


def patch_maps(
    acts: Float[Tensor, "batch rows n_features"],
    positions: Int[Tensor, " rows"] | None,
    n_prefix_tokens: int,
    grid_size: tuple[int, int],
    layout: TokenLayout | None = None,
) -> Float[Tensor, "batch n_features grid_h grid_w"] | Float[Tensor, "batch n_features frames grid_h grid_w"] | None:
    """The rows of ``acts`` that are patches, laid out on the patch grid; None if the SAE reads no patch.

    CLS and register rows are left out; patches the SAE does not read stay 0. For video (a ``layout`` with
    several frames, e.g. ``model.token_layout``) there is one grid per frame: ``[batch, n_features, frames,
    grid_h, grid_w]``. For a padded batch of images of different grids (a ``layout`` with ``grids``, SigLIP 2's
    NaFlex inputs) each image's grid sits in the top-left corner of ``grid_size`` (which must hold the largest),
    and padding tokens are left out.

    Example:
        >>> maps = patch_maps(*token_activations(model, sae, images, [3]), model.cfg.n_prefix_tokens, (7, 7))
    """
    if positions is None:
        return None
    if layout is not None and layout.grids is not None:
        return _padded_patch_maps(acts, positions, layout, grid_size)
    if layout is None or layout.frames == 1:
        layout = TokenLayout(n_prefix_tokens, grid=grid_size)
    is_patch = layout.is_patch(positions)
    if not bool(is_patch.any()):
        return None
    n_patches = grid_size[0] * grid_size[1]
    frame, patch_index = layout.patch_coordinates(positions[is_patch])
    if int(patch_index.max()) >= n_patches:
        raise InputShapeError(
            f"the SAE read patch position {int(patch_index.max())} but a {grid_size[0]}x{grid_size[1]} grid has "
            f"{n_patches} patches; the images' size does not match the tokens the model produced"
        )
    batch, _, n_features = acts.shape
    maps = acts.new_zeros(batch, n_features, layout.frames * n_patches)
    flat = (frame * n_patches + patch_index).to(acts.device)
    maps[:, :, flat] = acts[:, is_patch.to(acts.device)].transpose(1, 2)
    maps = maps.unflatten(-1, (layout.frames, *grid_size))
    return maps if layout.frames > 1 else maps[:, :, 0]


def _padded_patch_maps(
    acts: Float[Tensor, "batch rows n_features"], positions: Int[Tensor, " rows"], layout: TokenLayout,
    canvas: tuple[int, int],
) -> Float[Tensor, "batch n_features canvas_h canvas_w"] | None:
    grids = layout.grids.cpu()
    if int(grids[:, 0].max()) > canvas[0] or int(grids[:, 1].max()) > canvas[1]:
        raise InputShapeError(f"grid_size {canvas} cannot hold the largest image grid {tuple(grids.max(0).values.tolist())}")
    batch, _, n_features = acts.shape
    maps = acts.new_zeros(batch, n_features, *canvas)
    patch_rows = layout.is_patch(positions)
    for image, (rows, columns) in enumerate(grids.tolist()):
        index = layout.patch_index(positions) * patch_rows
        real = patch_rows & (index < rows * columns)
        grid_row, grid_column = index[real] // columns, index[real] % columns
        maps[image, :, grid_row, grid_column] = acts[image, real.to(acts.device)].T
    return maps if bool(patch_rows.any()) else None


def feature_heatmap(
    model: HookedViT, sae: SAE, image: Float[Tensor, "channels height width"], feature: int
) -> Float[Tensor, "grid_h grid_w"] | Float[Tensor, "frames grid_h grid_w"] | Float[Tensor, ""]:
    """Feature ``feature``'s activation on each patch of one preprocessed image, as a ``[grid_h, grid_w]`` grid
    (for one clip ``[frames, channels, height, width]`` of a video model: one grid per frame).

    CLS and register tokens are not part of the grid. An SAE that reads no patch (CLS-only SAEs, hooks
    without a token axis) gives a 0-d tensor: its activation on the CLS token (or the pooled vector).

    Example:
        >>> heatmap = feature_heatmap(model, sae, images[0], feature=123)  # [7, 7] for CLIP B/32
    """
    rank = 4 if model.cfg.is_video else 3
    what = "clip [frames, channels, height, width]" if model.cfg.is_video else "image [channels, height, width]"
    if not isinstance(image, Tensor) or image.ndim != rank:
        shape = described_shape(image)
        hint = " (take one with images[0])" if isinstance(image, Tensor) and image.ndim == rank + 1 else ""
        raise InputShapeError(
            f"feature_heatmap takes one {what}, got {shape}{hint}; for many use top_activating or token_activations"
        )
    model.check_images(image[None])
    acts, positions = token_activations(model, sae, image[None], feature)
    maps = patch_maps(
        acts, positions, model.cfg.n_prefix_tokens, patch_grid_size(model, image), model.token_layout
    )
    if maps is None:
        return acts[0, 0, 0]
    return maps[0, 0]
