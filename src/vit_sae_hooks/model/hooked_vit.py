"""HookedViT: a vision transformer whose every intermediate tensor is a TransformerLens HookPoint."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from vit_sae_hooks._tl import REMOVES_BATCH_DIM_ON_2D, ActivationCache, HookedRootModule, HookPoint
from vit_sae_hooks.checks import described_shape
from vit_sae_hooks.errors import ConfigError, HookNameError, InputShapeError, unknown_hook_message
from vit_sae_hooks.model import splice as splicing
from vit_sae_hooks.model.components import (
    DividedSpaceTimeBlock,
    Embed,
    ForwardContext,
    Head,
    Pool,
    TransformerBlock,
    make_norm,
)
from vit_sae_hooks.model.config import HookedViTConfig
from vit_sae_hooks.model.splice import Splice
from vit_sae_hooks.tokens import TokenLayout, TokenSpec

if TYPE_CHECKING:
    from vit_sae_hooks.sae import SAE

ReturnType = Literal["output", "pooled", "tokens"]


class ViTActivationCache(ActivationCache):
    """TransformerLens's ``ActivationCache``, with residual decompositions that sum to the residual stream
    in models with a LayerNorm before the first block (CLIP's ``ln_pre``).

    TransformerLens decomposes the stream into ``hook_embed + hook_pos_embed + attention and MLP outputs``;
    with ``ln_pre`` the embedding terms are taken before that LayerNorm, so the sum misses the stream. Here the
    ``"embed"`` term is the normalised embedding (``blocks.0.hook_resid_pre``, which must be cached) and
    ``"pos_embed"`` is left out; without ``ln_pre`` nothing changes.

    Example:
        >>> _, cache = model.run_with_cache(images)
        >>> cache.decompose_resid().sum(0)  # == cache["blocks.11.hook_resid_post"]
    """

    def _with_normalised_embedding(self) -> ActivationCache:
        if not getattr(self.model.cfg, "ln_pre", False) or "blocks.0.hook_resid_pre" not in self.cache_dict:
            return self
        cache = {name: tensor for name, tensor in self.cache_dict.items() if name != "hook_pos_embed"}
        cache["hook_embed"] = self.cache_dict["blocks.0.hook_resid_pre"]
        return ActivationCache(cache, self.model, has_batch_dim=self.has_batch_dim)

    def decompose_resid(self, *args: Any, **kwargs: Any) -> Any:
        """``ActivationCache.decompose_resid`` with the embedding taken after ``ln_pre`` (see the class)."""
        return ActivationCache.decompose_resid(self._with_normalised_embedding(), *args, **kwargs)

    def get_full_resid_decomposition(self, *args: Any, **kwargs: Any) -> Any:
        """``ActivationCache.get_full_resid_decomposition`` with the embedding taken after ``ln_pre``."""
        return ActivationCache.get_full_resid_decomposition(self._with_normalised_embedding(), *args, **kwargs)
HookSpec = str | Callable[[str], bool]


class HookedViT(HookedRootModule):
    """A vision transformer (CLIP, DINO, DINOv2, SigLIP, open_clip, timm) with TransformerLens hooks.

    The forward reads like the architecture: embed → (ln_pre) → blocks → ln_final → pool →
    head. Hook names follow TransformerLens (``blocks.3.hook_resid_post``, ``blocks.3.attn.hook_pattern``);
    ``docs/hooks.md`` lists them all with shapes. Every hook is writable: a value returned by a hook
    replaces the activation for everything downstream.

    Example:
        >>> model = HookedViT.from_pretrained("openai/clip-vit-base-patch32")
        >>> embeds, cache = model.run_with_cache(images)  # images: [batch, 3, 224, 224], preprocessed
        >>> cache["blocks.9.hook_resid_post"].shape  # [batch, 50, 768]
    """

    def __init__(self, cfg: HookedViTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]: prefix tokens then patch embeddings
        if self.embed.adds_positions:
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_full_embed = HookPoint()  # [batch, pos, d_model]: hook_embed + hook_pos_embed
        self.ln_pre = make_norm(cfg, cfg.d_model, cfg.ln_pre_eps) if cfg.ln_pre else None
        block = DividedSpaceTimeBlock if cfg.attention_type == "divided" else TransformerBlock
        self.blocks = nn.ModuleList(block(cfg, index) for index in range(cfg.n_layers))
        self.ln_final = make_norm(cfg, cfg.d_model, cfg.ln_final_eps) if cfg.ln_final else None
        self.pool = Pool(cfg)
        self.hook_pooled = HookPoint()  # [batch, d_model]
        self.head = Head(cfg) if cfg.head_type != "none" else None
        self.hook_output = HookPoint()  # [batch, d_output]: image embedding or logits
        self.setup()
        cfg.follow_parameters(self.embed.W_patch)
        self.token_layout = TokenLayout.of(cfg)
        self._share_layout()
        self.acts_to_saes: dict[str, SAE] = {}
        self._splices: dict[str, Splice] = {}

    def _share_layout(self) -> None:
        # Lets interventions resolve tokens="patches" (and find the patch grid) from the hook they run on.
        for hook_point in self.hook_dict.values():
            hook_point.token_layout = self.token_layout

    def _use_layout(self, layout: TokenLayout) -> None:
        """Make ``layout`` the token layout of the forward pass about to run (and of every hook point)."""
        if layout != self.token_layout:
            self.token_layout = layout
            self._share_layout()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: Float[Tensor, "batch channels height width"] | Float[Tensor, "batch pos d_model"],
        return_type: ReturnType | None = "output",
        stop_at_layer: int | None = None,
        start_at_layer: int | None = None,
        interpolate_pos_encoding: bool | None = None,
        grid: tuple[int, int] | None = None,
        pixel_attention_mask: Tensor | None = None,
        spatial_shapes: Tensor | None = None,
    ) -> Tensor | None:
        """Run the model on preprocessed images (or, with ``start_at_layer``, on a residual stream).

        Args:
            images: ``[batch, channels, height, width]`` float images, already normalised as the
                checkpoint expects; with ``start_at_layer=L``, the residual stream entering block L,
                ``[batch, pos, d_model]``.
            return_type: ``"output"`` (image embedding or logits, ``[batch, d_out]``), ``"pooled"``
                (``[batch, d_model]``), ``"tokens"`` (final-normalised tokens, ``[batch, pos, d_model]``),
                or None to run for the hooks only.
            stop_at_layer: run blocks ``[start, stop)`` and return the residual stream
                ``[batch, pos, d_model]`` (negative values count from the end).
            start_at_layer: begin at block L from the residual stream given as ``images``.
            interpolate_pos_encoding: resample position embeddings for other image sizes
                (defaults to the config's ``interpolate_pos_embed``, True for DINOv2).
            grid: with ``start_at_layer``, the patch grid (rows, columns) of the images the residual
                stream came from, when it is neither the checkpoint's grid nor square.
            pixel_attention_mask, spatial_shapes: SigLIP 2's NaFlex inputs, exactly as
                ``Siglip2VisionModel.forward`` takes them: ``images`` is then ``[batch, max_patches,
                patch * patch * channels]``, the mask ``[batch, max_patches]`` (1 on real patches) and the
                shapes ``[batch, 2]`` (each image's rows and columns of patches).

        Example:
            >>> resid = model(images, stop_at_layer=6)  # [batch, pos, d_model]
            >>> logits = model(resid, start_at_layer=6)
        """
        cfg = self.cfg
        start = self._layer_index(start_at_layer, "start_at_layer") if start_at_layer is not None else 0
        stop = self._layer_index(stop_at_layer, "stop_at_layer") if stop_at_layer is not None else cfg.n_layers
        if start_at_layer is None and (pixel_attention_mask is not None or spatial_shapes is not None):
            valid, spatial_shapes = self._check_patches(images, pixel_attention_mask, spatial_shapes)
            context = self._padded_context(valid, spatial_shapes)
            tokens, pos_embed = self.embed.from_patches(images, spatial_shapes)
        elif start_at_layer is None:
            self.check_images(images, interpolate_pos_encoding)
            grid = (images.shape[-2] // cfg.patch_size[0], images.shape[-1] // cfg.patch_size[1])
            context = self._context(grid, images.shape[0], images.device, self._time_positions(images))
            tokens, pos_embed = self.embed(images)
        if start_at_layer is None:
            tokens = self.hook_embed(tokens)
            if pos_embed is not None:
                tokens = tokens + self.hook_pos_embed(pos_embed)
            resid = self.hook_full_embed(tokens)
            if self.ln_pre is not None:
                resid = self.ln_pre(resid)
        elif pixel_attention_mask is not None or spatial_shapes is not None:
            resid = self._check_residual(images)
            padding = self._check_padding(resid.shape[:2], resid.device, pixel_attention_mask, spatial_shapes)
            context = self._padded_context(*padding)
        else:
            resid = self._check_residual(images)
            frames = self.cfg.n_time if self.cfg.is_video else 1
            context = self._context(self._residual_grid(resid, grid, frames), resid.shape[0], resid.device, frames)
        for block in self.blocks[start:stop]:
            resid = block(resid, context)
        if stop_at_layer is not None:
            return resid
        return self._finish(resid, return_type, context)

    def _time_positions(self, clips: Tensor) -> int:
        """How many positions in time the patch embedding makes of ``clips`` (1 for images)."""
        cfg = self.cfg
        if not cfg.is_video:
            return 1
        frames = clips.shape[1]
        if cfg.repeat_short_clips and frames < cfg.tubelet_size:
            return 1
        if frames < cfg.tubelet_size:
            raise InputShapeError(f"clips of {frames} frames are shorter than one tubelet of {cfg.tubelet_size} frames")
        return frames // cfg.tubelet_size

    def _context(self, grid: tuple[int, int], batch: int, device: torch.device, frames: int = 1) -> ForwardContext:
        """The token layout and rotary tables one forward pass shares, for images cut into ``grid`` patches
        (and clips of ``frames`` time positions)."""
        layout = TokenLayout.of(self.cfg, grid, frames)
        self._use_layout(layout)
        rotary = None
        if self.cfg.positional_embedding_type == "rotary":
            n_pos = layout.n_prefix_tokens + grid[0] * grid[1] * frames
            rotary = self.blocks[0].attn.rotary.tables(layout, n_pos, self.embed.W_patch.dtype, device)
        return ForwardContext(layout=layout, rotary=rotary)

    def _padded_context(self, valid: Tensor, spatial_shapes: Tensor) -> ForwardContext:
        layout = TokenLayout(
            n_prefix_tokens=self.cfg.n_prefix_tokens, has_cls_token=self.cfg.has_cls_token, grids=spatial_shapes,
            valid=valid,
        )
        self._use_layout(layout)
        # A batch without padding needs no mask (and gets the fast unmasked attention).
        return ForwardContext(layout=layout, key_mask=None if bool(valid.all()) else valid)

    def _check_patches(self, patches: Any, mask: Any, spatial_shapes: Any) -> tuple[Tensor, Tensor]:
        """The padding mask and shapes of a NaFlex input, checked against each other and the model."""
        cfg = self.cfg
        self._require_naflex()
        width = cfg.patch_size[0] * cfg.patch_size[1] * cfg.n_channels
        if not isinstance(patches, Tensor) or patches.ndim != 3 or patches.shape[-1] != width or not patches.is_floating_point():
            shape = described_shape(patches)
            raise InputShapeError(f"NaFlex pixel_values must be float [batch, max_patches, {width}]; got {shape}")
        return self._check_padding(patches.shape[:2], patches.device, mask, spatial_shapes)

    def _require_naflex(self) -> None:
        cfg = self.cfg
        if not cfg.naflex:
            raise InputShapeError(
                f"pixel_attention_mask and spatial_shapes are SigLIP 2 NaFlex inputs; {cfg.model_name} takes images "
                f"[batch, {cfg.n_channels}, height, width]"
            )

    def _check_padding(
        self, batch_and_length: tuple[int, int], device: torch.device, mask: Any, spatial_shapes: Any
    ) -> tuple[Tensor, Tensor]:
        expected = "pixel_attention_mask [batch, max_patches] (1 on real patches) and spatial_shapes [batch, 2]"
        self._require_naflex()
        if mask is None or spatial_shapes is None:
            raise InputShapeError(f"NaFlex inputs need both {expected}")
        mask, shapes = torch.as_tensor(mask, device=device), torch.as_tensor(spatial_shapes).long()
        batch, length = batch_and_length
        if tuple(mask.shape) != (batch, length) or tuple(shapes.shape) != (batch, 2):
            raise InputShapeError(
                f"pixel_attention_mask {tuple(mask.shape)} and spatial_shapes {tuple(shapes.shape)} do not fit "
                f"{batch} sequences of {length} tokens; expected {expected}"
            )
        counts = shapes.prod(-1)
        if bool((counts > length).any()) or not torch.equal(mask.long().sum(-1).cpu(), counts):
            raise InputShapeError(
                f"spatial_shapes {shapes.tolist()} do not match pixel_attention_mask (real patches per image: "
                f"{mask.long().sum(-1).tolist()}); pass the processor's three outputs unchanged"
            )
        return mask.bool(), shapes

    def _residual_grid(self, resid: Tensor, grid: tuple[int, int] | None, frames: int = 1) -> tuple[int, int]:
        n_patches = (resid.shape[1] - self.cfg.n_prefix_tokens) // frames
        if grid is not None:
            if grid[0] * grid[1] != n_patches:
                raise InputShapeError(f"grid={grid} has {grid[0] * grid[1]} patches but the residual stream has {n_patches}")
            return tuple(grid)
        if n_patches * frames == self.cfg.n_patches:
            return self.cfg.grid_size
        side = math.isqrt(n_patches)
        if side * side != n_patches:
            raise InputShapeError(
                f"the residual stream has {n_patches} patch tokens, which is neither this model's grid "
                f"{self.cfg.grid_size} nor a square; pass grid=(rows, columns) with start_at_layer"
            )
        return (side, side)

    def _finish(self, resid: Tensor, return_type: ReturnType | None, context: ForwardContext) -> Tensor | None:
        cfg = self.cfg
        if self.ln_final is not None and not cfg.final_ln_after_pool:
            resid = self.ln_final(resid)
        if return_type == "tokens":
            return resid
        pooled = self.pool(resid, context)
        if self.ln_final is not None and cfg.final_ln_after_pool:
            pooled = self.ln_final(pooled)
        pooled = self.hook_pooled(pooled)
        output = self.hook_output(self.head(pooled) if self.head is not None else pooled)
        if return_type is None:
            return None
        if return_type == "pooled":
            return pooled
        if return_type == "output":
            return output
        raise ValueError(f"return_type={return_type!r} is not one of 'output', 'pooled', 'tokens', None")

    def _layer_index(self, layer: int, argument: str) -> int:
        n_layers = self.cfg.n_layers
        index = layer + n_layers if layer < 0 else layer
        if not 0 <= index <= n_layers:
            raise ValueError(f"{argument}={layer} is out of range for a model with {n_layers} blocks")
        return index

    # ------------------------------------------------------------------ input checks
    def check_images(self, images: Any, interpolate_pos_encoding: bool | None = None) -> None:
        """Raise :class:`InputShapeError` unless ``images`` is a float ``[batch, C, H, W]`` tensor (``[batch,
        frames, C, H, W]`` for video models) this model accepts."""
        cfg = self.cfg
        frames = f"{cfg.n_frames}, " if cfg.is_video else ""
        expected = f"[batch, {frames}{cfg.n_channels}, {cfg.image_size[0]}, {cfg.image_size[1]}]"
        what = "videos" if cfg.is_video else "images"
        if not isinstance(images, Tensor):
            raise InputShapeError(f"{what} must be a torch.Tensor of shape {expected}, got {type(images).__name__}")
        rank = 5 if cfg.is_video else 4
        if images.ndim != rank:
            hint = " (add a batch dimension with unsqueeze(0))" if images.ndim == rank - 1 else ""
            if cfg.is_video and images.ndim == 4:
                hint += "; this is a video model: pass clips [batch, frames, channels, height, width]"
            raise InputShapeError(
                f"{what} must have shape {expected}, got a {images.ndim}-d tensor of shape "
                f"{tuple(images.shape)}{hint}"
            )
        if not images.is_floating_point():
            raise InputShapeError(
                f"images must be a float tensor preprocessed for the model (dtype {images.dtype} given); "
                "convert with images.float() and normalise with the checkpoint's mean and std"
            )
        if images.shape[-3] != cfg.n_channels:
            raise InputShapeError(
                f"{what} have {images.shape[-3]} channels but the model expects {cfg.n_channels}: "
                f"shape {tuple(images.shape)} given, {expected} expected (channels before height and width)"
            )
        # A learned table per space-time token fixes the clip length; V-JEPA 2's rotary positions do not.
        if cfg.is_video and cfg.positional_embedding_type == "standard" and images.shape[1] != cfg.n_frames:
            raise InputShapeError(
                f"clips have {images.shape[1]} frames but {cfg.model_name} reads exactly {cfg.n_frames} (shape {expected})"
            )
        height, width = images.shape[-2:]
        if (height, width) == tuple(cfg.image_size):
            return
        # Rotary and sine-cosine positions are computed for any grid; only a learned table needs resampling,
        # and a table per space-time token (ViViT) is not resampled at all.
        resizable = cfg.positional_embedding_type != "standard"
        if cfg.is_video and not resizable and not cfg.time_embedding:
            raise InputShapeError(
                f"frames are {height}x{width} but {cfg.model_name} reads exactly {expected}; resize them. Its learned "
                "position table has one row per space-time token; transformers' ViViT resampling treats that whole "
                "table as one square image grid, which is only defined for a single time position, so it is not "
                "reproduced here"
            )
        interpolate = cfg.interpolate_pos_embed if interpolate_pos_encoding is None else interpolate_pos_encoding
        interpolate = interpolate or resizable
        if not interpolate:
            raise InputShapeError(
                f"images are {height}x{width} but the model expects {cfg.image_size[0]}x{cfg.image_size[1]} "
                f"(shape {expected}); resize them, or pass interpolate_pos_encoding=True to resample the "
                "position embeddings"
            )
        if height % cfg.patch_size[0] or width % cfg.patch_size[1]:
            raise InputShapeError(
                f"images of {height}x{width} cannot be cut into {cfg.patch_size[0]}x{cfg.patch_size[1]} "
                "patches; use a height and width that are multiples of the patch size"
            )

    def _check_residual(self, resid: Any) -> Tensor:
        d_model = self.cfg.d_model
        if not isinstance(resid, Tensor) or resid.ndim != 3 or resid.shape[-1] != d_model:
            shape = described_shape(resid)
            raise InputShapeError(
                f"with start_at_layer the input must be a residual stream [batch, pos, {d_model}], got {shape}"
            )
        return resid

    # ------------------------------------------------------------------ hooks
    def check_hook_name(self, name: str) -> None:
        """Raise :class:`HookNameError` naming the closest valid hooks unless ``name`` is a hook."""
        if name not in self.hook_dict:
            raise HookNameError(unknown_hook_message(name, self.hook_dict, self.cfg.n_layers))

    def _check_hook_specs(self, specs: Sequence[tuple[HookSpec, Callable]]) -> None:
        for name, _ in specs:
            if isinstance(name, str):
                self.check_hook_name(name)

    def add_hook(self, name: HookSpec, hook: Callable, dir: str = "fwd", is_permanent: bool = False, **kwargs):
        """Attach ``hook`` to the hook named ``name`` (or to every hook whose name passes ``name``)."""
        if isinstance(name, str):
            self.check_hook_name(name)
        return super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, **kwargs)

    @contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True, clear_contexts: bool = False):
        """TransformerLens's temporary-hooks context manager, with hook names checked first."""
        self._check_hook_specs(list(fwd_hooks) + list(bwd_hooks))
        with super().hooks(list(fwd_hooks), list(bwd_hooks), reset_hooks_end, clear_contexts) as model:
            yield model

    def run_with_cache(
        self, *model_args: Any, return_cache_object: bool = True, names_filter: Any = None, **kwargs: Any
    ) -> tuple[Any, ActivationCache | dict[str, Tensor]]:
        """Run the model and return ``(output, cache)``; the cache is a TransformerLens ``ActivationCache``.

        Example:
            >>> out, cache = model.run_with_cache(images, names_filter=lambda n: n.endswith("resid_post"))
            >>> cache.accumulated_resid().shape  # [n_layers + 1, batch, pos, d_model]
        """
        names = [names_filter] if isinstance(names_filter, str) else names_filter
        if isinstance(names, (list, tuple)):
            for name in names:
                self.check_hook_name(name)
        remove_batch_dim = kwargs.pop("remove_batch_dim", False)
        # TransformerLens before 4.0 cannot drop the batch axis of 2-D activations (hook_pooled); do it here.
        drop_here = remove_batch_dim and not REMOVES_BATCH_DIM_ON_2D
        output, cache_dict = super().run_with_cache(
            *model_args, names_filter=names_filter, remove_batch_dim=remove_batch_dim and not drop_here, **kwargs
        )
        if drop_here:
            if output is not None and output.shape[0] != 1:
                raise InputShapeError(f"remove_batch_dim=True needs a batch of one image, got {output.shape[0]}")
            cache_dict = {name: tensor[0] for name, tensor in cache_dict.items()}
        if return_cache_object:
            return output, ViTActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return output, cache_dict

    # ------------------------------------------------------------------ TransformerLens conventions
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Compute each head's output separately and hook it (``attn.hook_result``), as TransformerLens does.

        Example:
            >>> model.set_use_attn_result(True); _, cache = model.run_with_cache(images)  # blocks.0.attn.hook_result
        """
        self._set_switch("use_attn_result", use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Give queries, keys and values their own per-head copy of the residual stream (``hook_q_input``, ...).

        Example:
            >>> model.set_use_split_qkv_input(True)  # blocks.L.hook_q_input [batch, pos, head, d_model]
        """
        if use_split_qkv_input and self.cfg.use_attn_in:
            raise ConfigError("use_split_qkv_input and use_attn_in exclude each other; call set_use_attn_in(False) first")
        self._set_switch("use_split_qkv_input", use_split_qkv_input)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Give attention one per-head copy of the residual stream, hooked as ``blocks.L.hook_attn_in``.

        Example:
            >>> model.set_use_attn_in(True)  # blocks.L.hook_attn_in [batch, pos, head, d_model]
        """
        if use_attn_in and self.cfg.use_split_qkv_input:
            raise ConfigError("use_attn_in and use_split_qkv_input exclude each other; call set_use_split_qkv_input(False) first")
        self._set_switch("use_attn_in", use_attn_in)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Hook the MLP's input before its LayerNorm, ``blocks.L.hook_mlp_in``, as TransformerLens does.

        Example:
            >>> model.set_use_hook_mlp_in(True)  # blocks.L.hook_mlp_in [batch, pos, d_model]
        """
        self._set_switch("use_hook_mlp_in", use_hook_mlp_in)

    def _set_switch(self, name: str, value: bool) -> None:
        if value and name != "use_attn_result" and self.cfg.attention_type == "divided":
            raise ConfigError(
                f"{name} is not available for divided space-time attention (TimeSformer); its temporal and spatial "
                "attentions read different token groupings"
            )
        setattr(self.cfg, name, bool(value))
        for module in self.modules():
            if module is not self and hasattr(module, "sync_optional_hooks"):
                module.sync_optional_hooks()
        self.setup()
        self._share_layout()

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """The sum of the attention (and MLP) output biases of blocks ``0..layer-1`` (and of block ``layer``'s
        attention with ``mlp_input``), as TransformerLens's ``get_full_resid_decomposition`` uses it.

        Example:
            >>> model.accumulated_bias(3, mlp_input=True).shape  # [d_model]
        """
        if not 0 <= layer <= self.cfg.n_layers or (mlp_input and layer == self.cfg.n_layers):
            raise ValueError(f"layer={layer} is out of range for a model with {self.cfg.n_layers} blocks")
        bias = torch.zeros(self.cfg.d_model, device=self.cfg.device, dtype=self.cfg.dtype)
        for block in self.blocks[:layer]:
            bias = bias + block.attn.b_O + (block.mlp.b_out if include_mlp_biases else 0)
        if mlp_input:
            bias = bias + self.blocks[layer].attn.b_O
        return bias

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> HookedViT:
        # .to(), .cuda(), .half() and friends all pass here; keep cfg.device and cfg.dtype truthful.
        module = super()._apply(fn, *args, **kwargs)
        self.cfg.follow_parameters(self.embed.W_patch)
        return module

    # ------------------------------------------------------------------ SAEs
    def add_sae(
        self, sae: SAE, hook_name: str | None = None, use_error_term: bool = False, tokens: TokenSpec = None,
        hook_name_in: str | None = None,
    ) -> None:
        """Splice ``sae`` in at ``hook_name`` (default: the hook it was trained on) until :meth:`reset_saes`.

        ``sae`` is this library's :class:`~vit_sae_hooks.SAE` or a ``sae_lens.SAE`` (spliced as it is, its own
        forward and hooks running).

        The hook's activation is replaced by the SAE's reconstruction on the SAE's tokens (its ``token_set``:
        all, CLS only or patches only) or on ``tokens`` ("all", "cls", "patches", a list of positions, a
        ``[pos]`` or ``[batch, pos]`` boolean mask); other tokens pass through unchanged. With
        ``use_error_term`` the error ``x - sae(x)`` is added back, so the output is unchanged until a hook
        edits features. The SAE's hooks appear as ``{hook_name}.hook_sae_acts_post`` etc.

        A transcoder replaces the hook it predicts (``hook_name``, default its ``hook_name_out``, e.g.
        ``blocks.5.hook_mlp_out``) by its prediction from the hook it reads (``hook_name_in``, default its
        ``hook_name``, e.g. ``blocks.5.ln2.hook_normalized``); with ``use_error_term`` the error is the true
        output minus the prediction, so the model is unchanged until a feature is edited.

        Example:
            >>> model.add_sae(sae)  # sae.hook_name == "blocks.9.hook_resid_post"
            >>> _, cache = model.run_with_cache(images)
            >>> cache["blocks.9.hook_resid_post.hook_sae_acts_post"].shape  # [batch, tokens, d_sae]
        """
        splicing.attach(self, sae, hook_name, use_error_term, tokens, hook_name_in=hook_name_in)

    def reset_saes(self, hook_names_or_saes: Sequence[str | SAE] | None = None) -> None:
        """Detach the given SAEs (or those at the given hook names; all by default).

        Example:
            >>> model.reset_saes()
        """
        if hook_names_or_saes is None:
            targets = list(self.acts_to_saes)
        else:
            by_sae = {id(sae): name for name, sae in self.acts_to_saes.items()}
            targets = [by_sae.get(id(item), item) if not isinstance(item, str) else item for item in hook_names_or_saes]
        for name in targets:
            if name not in self.acts_to_saes:
                raise HookNameError(
                    f"no SAE is attached at {name!r}; attached: {sorted(self.acts_to_saes) or 'none'}"
                )
            splicing.detach(self, name)

    @contextmanager
    def saes(self, saes: Sequence[SAE] = (), use_error_term: bool | None = None, tokens: TokenSpec = None):
        """Attach ``saes`` for the duration of a ``with`` block; on exit (even by an exception) they are removed.

        ``use_error_term=None`` keeps each SAE's own ``use_error_term`` setting.

        Example:
            >>> with model.saes([sae], use_error_term=True):
            ...     logits = model(images)
        """
        attached: list[tuple[str, SAE]] = []
        try:
            for sae in saes:
                error_term = splicing.spliceable(sae).use_error_term if use_error_term is None else use_error_term
                splice = splicing.attach(self, sae, None, error_term, tokens)
                attached.append((splice.hook_name, sae))
            yield self
        finally:
            # Only what this block attached, and only if the block did not already detach it itself.
            self.reset_saes([name for name, sae in attached if self.acts_to_saes.get(name) is sae])

    def run_with_saes(
        self,
        *model_args: Any,
        saes: Sequence[SAE] = (),
        use_error_term: bool | None = None,
        tokens: TokenSpec = None,
        fwd_hooks: Sequence = (),
        **model_kwargs: Any,
    ) -> Tensor | None:
        """Run the model with ``saes`` spliced in (and optional ``fwd_hooks``), then detach them.

        Example:
            >>> acts = "blocks.9.hook_resid_post.hook_sae_acts_post"
            >>> logits = model.run_with_saes(images, saes=[sae], use_error_term=True,
            ...                              fwd_hooks=[(acts, ablate_features([123]))])
        """
        with self.saes(saes, use_error_term=use_error_term, tokens=tokens):
            return self.run_with_hooks(*model_args, fwd_hooks=list(fwd_hooks), **model_kwargs)

    def run_with_cache_with_saes(
        self,
        *model_args: Any,
        saes: Sequence[SAE] = (),
        use_error_term: bool | None = None,
        tokens: TokenSpec = None,
        **kwargs: Any,
    ) -> tuple[Any, ActivationCache]:
        """:meth:`run_with_cache` with ``saes`` spliced in; the cache includes the SAEs' hooks.

        Example:
            >>> _, cache = model.run_with_cache_with_saes(images, saes=[sae])
        """
        with self.saes(saes, use_error_term=use_error_term, tokens=tokens):
            return self.run_with_cache(*model_args, **kwargs)

    # ------------------------------------------------------------------ TransformerLens-style weights
    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        """Query weights of every block, stacked."""
        return torch.stack([block.attn.W_Q for block in self.blocks])

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        """Key weights of every block, stacked."""
        return torch.stack([block.attn.W_K for block in self.blocks])

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        """Value weights of every block, stacked."""
        return torch.stack([block.attn.W_V for block in self.blocks])

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        """Output weights of every block, stacked."""
        return torch.stack([block.attn.W_O for block in self.blocks])

    @property
    def W_in(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        """MLP input weights of every block, stacked."""
        return torch.stack([block.mlp.W_in for block in self.blocks])

    @property
    def W_out(self) -> Float[Tensor, "n_layers d_mlp d_model"]:
        """MLP output weights of every block, stacked."""
        return torch.stack([block.mlp.W_out for block in self.blocks])

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        use_attn_result: bool = False,
    ) -> HookedViT:
        """Load a checkpoint from a local folder or a Hugging Face hub id (offline from the cache).

        Detects the format from the files: HF ``CLIPVisionModel``/``CLIPVisionModelWithProjection``/
        ``CLIPModel``, ``ViTModel``/``ViTForImageClassification`` (DINO), ``Dinov2Model``,
        ``SiglipVisionModel``/``SiglipModel``, the open_clip hub layout, timm ViT exports, and this
        library's own ``save_pretrained`` folders. No weight processing: hooks see the raw activations.

        Example:
            >>> model = HookedViT.from_pretrained("laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K")
        """
        from vit_sae_hooks.model.loading import load_checkpoint
        from vit_sae_hooks.model.loading.convert import check_state_dict

        cfg, state_dict, origin = load_checkpoint(name_or_path, revision=revision, cache_dir=cache_dir)
        cfg.use_attn_result = use_attn_result
        with torch.device("meta"):
            model = cls(cfg)
        check_state_dict(model.state_dict(), state_dict, origin)
        model.load_state_dict(state_dict, strict=True, assign=True)
        # Inference mode, as transformers and TransformerLens load models (TransformerLens's patching refuses others).
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``hooked_vit_config.json`` and ``model.safetensors`` that :meth:`from_pretrained` reads back.

        Example:
            >>> model.save_pretrained("my_model")
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.cfg.save(folder / "hooked_vit_config.json")
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "vit_sae_hooks"})
        return folder
