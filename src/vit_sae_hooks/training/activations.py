"""Activations to train on: hooks of a HookedViT over images, or tensors, served as shuffled token batches.

A source may carry several hooks read in the same forward pass (several SAEs from one pass, or a
transcoder's input and output hooks): each batch row is one token, its hooks' features side by side, and
:func:`hook_columns` says which columns hold which hook.

Every source cuts its data into *blocks* (a buffer's worth of images, or of rows) and shuffles the tokens
of each block with a generator seeded by ``(seed, shard, block)``; a :class:`BlockStream` serves fixed-size
batches from consecutive blocks. A stream's position is just ``(block, offset)``, so a resumed run
recomputes one block and continues with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

from vit_sae_hooks.checks import described_shape
from vit_sae_hooks.data.batches import MODEL_INPUTS
from vit_sae_hooks.errors import ConfigError, DataError, InputShapeError
from vit_sae_hooks.hook_names import PER_HEAD_HOOKS, stop_layer
from vit_sae_hooks.tokens import select_tokens

if TYPE_CHECKING:
    from vit_sae_hooks.model import HookedViT

def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from ``keys`` (e.g. seed, shard, block), independent of any global RNG.

    Example:
        >>> permutation = torch.randperm(10, generator=seeded_generator(0, 1, 2))
    """
    digest = hashlib.sha256(repr(tuple(int(key) for key in keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def hook_activations(
    model: HookedViT, images: Float[Tensor, "batch channels height width"], hook_name: str | Sequence[str],
    token_set: str = "all", autocast: bool = True, **inputs: Tensor,
) -> Float[Tensor, "tokens d"]:
    """The chosen tokens of ``hook_name`` on ``images``, running the model only as far as that hook.

    With several hook names, one forward pass reads them all and each token's features are concatenated in
    the order given (hooks with heads, ``[.., head, d_head]``, are flattened). ``inputs`` are the model's
    other forward keywords: SigLIP 2's NaFlex ``pixel_attention_mask`` and ``spatial_shapes`` with padded
    patches as ``images``, whose padding tokens are then left out.

    Example:
        >>> acts = hook_activations(model, images, "blocks.9.hook_resid_post", "patches")  # [batch * 49, 768]
    """
    names = [hook_name] if isinstance(hook_name, str) else list(hook_name)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"hook names {names!r} must be one or more distinct hooks.")
    for name in names:
        model.check_hook_name(name)
    captured: dict[str, Tensor] = {}

    def capture(activation: Tensor, hook: Any) -> None:
        captured[hook.name] = activation

    stops = [stop_layer(name) for name in names]
    stop = None if None in stops else max(stops)
    use_autocast = autocast and images.is_cuda
    with (
        torch.no_grad(),
        torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast),
        model.hooks(fwd_hooks=[(name, capture) for name in names]),
    ):
        if stop is None:
            model(images, return_type=None, **inputs)
        else:
            model(images, stop_at_layer=stop, **inputs)
    layout = model.token_layout
    parts = []
    for name in names:
        activation = captured[name]
        if activation.ndim == 4 and name.rsplit(".", 1)[-1] in PER_HEAD_HOOKS:
            activation = activation.flatten(-2)  # [batch, pos, head, d] -> one vector per token
        parts.append(
            select_tokens(activation, token_set, layout.n_prefix_tokens, layout.has_cls_token, repr(name), layout.valid)
        )
    if len({part.shape[0] for part in parts}) > 1:
        counts = {name: part.shape[0] for name, part in zip(names, parts, strict=True)}
        raise InputShapeError(
            f"the hooks give different numbers of tokens per batch ({counts}); hooks read together must cover the "
            "same tokens (e.g. all per-token hooks, or all per-image ones)."
        )
    return (parts[0] if len(parts) == 1 else torch.cat(parts, -1)).float()


def hook_columns(data: Any) -> dict[str | None, slice]:
    """Which columns of ``data``'s batches hold each of its hooks, e.g. ``{"blocks.3.hook_resid_post": slice(0, 768)}``.

    Sources that name one hook (``hook_name``, width ``d_in``) hold it in every column.

    Example:
        >>> hook_columns(ImageActivations(model, ["blocks.2.hook_resid_post", "blocks.5.hook_resid_post"], images))
        {'blocks.2.hook_resid_post': slice(0, 768, None), 'blocks.5.hook_resid_post': slice(768, 1536, None)}
    """
    names = tuple(getattr(data, "hook_names", None) or (data.hook_name,))
    widths = tuple(getattr(data, "widths", None) or (data.d_in,))
    starts = [sum(widths[:i]) for i in range(len(widths))]
    return {name: slice(start, start + width) for name, start, width in zip(names, starts, widths, strict=True)}


class TokenStream(Protocol):
    """A resumable source of token batches: ``next_batch(n)``, plus ``state_dict`` / ``load_state_dict``."""

    def next_batch(self, n_tokens: int) -> Float[Tensor, "n_tokens d"]: ...

    def state_dict(self) -> dict[str, int]: ...

    def load_state_dict(self, state: dict[str, int]) -> None: ...


class ActivationData(Protocol):
    """What the trainer trains on: a width, provenance, and one :class:`TokenStream` per data shard.

    ``d_in`` is the width of a batch row; a source of several hooks also has ``hook_names`` and ``widths``
    (see :func:`hook_columns`), and its ``hook_name`` is the first of them.
    """

    d_in: int
    hook_name: str | None
    token_set: str
    model_name: str | None

    def stream(self, shard: int, n_shards: int, seed: int) -> TokenStream: ...


class BlockStream:
    """Batches cut from consecutive shuffled blocks ``blocks(0), blocks(1), ...``; position ``(block, offset)``.

    Example:
        >>> stream = BlockStream(lambda index: torch.randn(1000, 64)); batch = stream.next_batch(4096)
    """

    def __init__(self, blocks: Callable[[int], Float[Tensor, "tokens d"]]) -> None:
        self._blocks = blocks
        self._index = 0
        self._offset = 0
        self._block: Tensor | None = None

    def next_batch(self, n_tokens: int) -> Float[Tensor, "n_tokens d"]:
        """The next ``n_tokens`` token activations, continuing into the following blocks as needed.

        Example:
            >>> batch = stream.next_batch(4096)  # [4096, d]
        """
        parts = []
        needed = n_tokens
        while needed > 0:
            if self._block is None:
                self._block = self._blocks(self._index)
                if len(self._block) == 0:
                    raise DataError(f"data block {self._index} holds no tokens; check that the images yield tokens.")
            part = self._block[self._offset : self._offset + needed]
            parts.append(part)
            self._offset += len(part)
            needed -= len(part)
            if self._offset >= len(self._block):
                self._index, self._offset, self._block = self._index + 1, 0, None
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict[str, int]:
        """The stream's position, e.g. ``{"block": 3, "offset": 512}``."""
        return {"block": self._index, "offset": self._offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a position returned by :meth:`state_dict` (the block is recomputed on demand).

        Example:
            >>> stream.load_state_dict({"block": 3, "offset": 512})
        """
        self._index, self._offset, self._block = int(state["block"]), int(state["offset"]), None


def shuffled(tokens: Float[Tensor, "tokens d"], *keys: int) -> Float[Tensor, "tokens d"]:
    """``tokens`` in an order fixed by ``keys``, so the same block always shuffles the same way.

    Example:
        >>> mixed = shuffled(block, seed, shard, index)
    """
    return tokens[torch.randperm(len(tokens), generator=seeded_generator(*keys)).to(tokens.device)]


class TensorActivations:
    """Activations already in memory, ``[tokens, d_in]``, as training data (synthetic data, tests, small sets).

    ``activations`` may also be a dict ``{hook_name: [tokens, d]}`` of several hooks over the same tokens (to
    train several SAEs, or a transcoder, from them). Shard ``s`` of ``n`` holds rows ``s, s + n, ...``; each
    epoch visits them in a fresh order, ``block_tokens`` at a time.

    Example:
        >>> data = TensorActivations(torch.randn(100_000, 768), hook_name="blocks.9.hook_resid_post")
    """

    def __init__(
        self, activations: Float[Tensor, "tokens d_in"] | dict[str, Float[Tensor, "tokens d"]], hook_name: str | None = None,
        token_set: str = "all", model_name: str | None = None, block_tokens: int = 65536,
    ) -> None:
        self.hook_names: tuple[str | None, ...] = (hook_name,)
        if isinstance(activations, dict):
            if hook_name is not None:
                raise ConfigError("pass hook names as the dict's keys, not also as hook_name.")
            if not activations:
                raise InputShapeError("activations is an empty dict; pass {hook_name: [tokens, d]} for each hook.")
            for name, tensor in activations.items():
                _check_token_matrix(tensor, f"activations[{name!r}]")
            if len({tensor.shape[0] for tensor in activations.values()}) > 1:
                counts = {name: tensor.shape[0] for name, tensor in activations.items()}
                raise InputShapeError(f"every hook's activations must cover the same tokens; got rows {counts}.")
            self.hook_names = tuple(activations)
            self.widths = tuple(tensor.shape[1] for tensor in activations.values())
            activations = torch.cat(list(activations.values()), 1)
        _check_token_matrix(activations, "activations")
        if len(self.hook_names) == 1:
            self.widths = (activations.shape[1],)
        self.activations = activations
        self.d_in = activations.shape[1]
        self.hook_name = self.hook_names[0]
        self.token_set = token_set
        self.model_name = model_name
        self.block_tokens = block_tokens

    def stream(self, shard: int, n_shards: int, seed: int) -> BlockStream:
        """The batches of shard ``shard`` of ``n_shards``, ordered by ``seed``.

        Example:
            >>> batch = data.stream(0, 1, seed=0).next_batch(4096)
        """
        rows = torch.arange(shard, len(self.activations), n_shards)
        if len(rows) == 0:
            raise DataError(f"shard {shard} of {n_shards} is empty: only {len(self.activations)} rows; use fewer shards.")
        blocks_per_epoch = -(-len(rows) // self.block_tokens)

        def block(index: int) -> Tensor:
            epoch, position = divmod(index, blocks_per_epoch)
            order = rows[torch.randperm(len(rows), generator=seeded_generator(seed, shard, epoch))]
            return self.activations[order[position * self.block_tokens : (position + 1) * self.block_tokens]]

        return BlockStream(block)


class ImageActivations:
    """Hook activations on a set of images, computed a buffer of ``images_per_block`` images at a time.

    ``hook_name`` is one hook or a list of hooks read in the same forward pass (see :func:`hook_columns`).
    ``images`` is a sequence (``len`` and indexing, e.g. :class:`~vit_sae_hooks.data.ImageFolder`) whose items
    are ``[C, H, W]`` tensors or ``(tensor, label)`` pairs, or any re-iterable of such items. For SigLIP 2's
    NaFlex inputs an item is one image's share of what ``Siglip2ImageProcessor`` returns, a dict of
    ``pixel_values [max_patches, 3·p·p]``, ``pixel_attention_mask [max_patches]`` and ``spatial_shapes [2]``
    (images of any aspect ratio, padded to one ``max_patches``); padding tokens are not trained on. Shard ``s`` of
    ``n`` gets images ``s, s + n, ...``; a sequence is visited in a fresh order each epoch, an iterable in its
    own order. The tokens of each buffer are shuffled together, so a batch mixes many images.

    Example:
        >>> data = ImageActivations(model, "blocks.9.hook_resid_post", ImageFolder("imgs", preprocess_for(model)))
    """

    def __init__(
        self, model: HookedViT, hook_name: str | Sequence[str], images: Sequence[Any] | Iterable[Any],
        token_set: str = "all", images_per_block: int = 256, batch_size: int = 64, num_workers: int = 0,
        autocast: bool = True,
    ) -> None:
        self.hook_names: tuple[str, ...] = (hook_name,) if isinstance(hook_name, str) else tuple(hook_name)
        for name in self.hook_names:
            model.check_hook_name(name)
        self.model = model
        self.images = images
        self.hook_name = self.hook_names[0]
        self.token_set = token_set
        self.model_name = model.cfg.model_name
        self.images_per_block = images_per_block
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.autocast = autocast
        self.device = next(model.parameters()).device
        self.widths = self._probe_widths()
        self.d_in = sum(self.widths)

    def _probe_widths(self) -> tuple[int, ...]:
        cfg = self.model.cfg
        probe = torch.zeros(cfg.input_shape(1), device=self.device)
        return tuple(
            hook_activations(self.model, probe, name, self.token_set, self.autocast).shape[-1] for name in self.hook_names
        )

    def activations(self, images: Iterable[Any]) -> Float[Tensor, "tokens d_in"]:
        """The chosen tokens of the hook on ``images`` (items as in the constructor), batch by batch.

        Example:
            >>> acts = data.activations([dataset[0], dataset[1]])
        """
        loader = torch.utils.data.DataLoader(
            images if is_indexable(images) else list(images),
            batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=_stack_images,
        )
        parts = [
            hook_activations(
                self.model, batch.to(self.device), self.hook_names, self.token_set, self.autocast,
                **{name: value.to(self.device) for name, value in inputs.items()},
            )
            for batch, inputs in loader
        ]
        return torch.cat(parts) if parts else torch.empty(0, self.d_in, device=self.device)

    def stream(self, shard: int, n_shards: int, seed: int) -> BlockStream:
        """The batches of image shard ``shard`` of ``n_shards``, ordered by ``seed``.

        Example:
            >>> batch = data.stream(rank, world_size, seed=0).next_batch(4096)
        """
        if is_indexable(self.images):
            block_images = self._sequence_blocks(shard, n_shards, seed)
        else:
            block_images = self._iterable_blocks(shard, n_shards)
        return BlockStream(lambda index: shuffled(self.activations(block_images(index)), seed, shard, index))

    def _sequence_blocks(self, shard: int, n_shards: int, seed: int) -> Callable[[int], Iterable[Any]]:
        images = self.images
        indices = torch.arange(shard, len(images), n_shards)
        if len(indices) == 0:
            raise DataError(f"image shard {shard} of {n_shards} is empty: only {len(images)} images; use fewer shards.")
        blocks_per_epoch = -(-len(indices) // self.images_per_block)

        def block_images(index: int) -> Iterable[Any]:
            epoch, position = divmod(index, blocks_per_epoch)
            order = indices[torch.randperm(len(indices), generator=seeded_generator(seed, shard, epoch))]
            chosen = order[position * self.images_per_block : (position + 1) * self.images_per_block]
            return torch.utils.data.Subset(images, chosen.tolist())

        return block_images

    def _iterable_blocks(self, shard: int, n_shards: int) -> Callable[[int], Iterable[Any]]:
        state: dict[str, Any] = {"next": 0, "items": None}

        def block_images(index: int) -> list[Any]:
            # An iterable cannot seek: restart it and skip earlier blocks' images without running the model.
            if state["items"] is None or state["next"] != index:
                state["items"] = _endless_shard(self.images, shard, n_shards)
                for _ in range(index * self.images_per_block):
                    next(state["items"])
            state["next"] = index + 1
            return [next(state["items"]) for _ in range(self.images_per_block)]

        return block_images


def _check_token_matrix(tensor: Any, what: str) -> None:
    if not isinstance(tensor, Tensor) or tensor.ndim != 2 or not tensor.is_floating_point():
        shape = described_shape(tensor)
        raise InputShapeError(f"{what} must be a float tensor [tokens, d_in], got {shape}.")


def is_indexable(items: Any) -> bool:
    """Whether ``items`` has ``len`` and integer indexing (a list, a torch ``Dataset`` such as ``ImageFolder``).

    Example:
        >>> is_indexable([1, 2]), is_indexable(iter([1, 2]))
        (True, False)
    """
    return hasattr(items, "__len__") and hasattr(items, "__getitem__")


def _endless_shard(images: Iterable[Any], shard: int, n_shards: int) -> Iterator[Any]:
    while True:
        seen = 0
        for position, item in enumerate(images):
            if position % n_shards == shard:
                seen += 1
                yield item
        if seen == 0:
            raise DataError(
                f"the images gave shard {shard} of {n_shards} nothing (an exhausted iterator?); pass a re-iterable "
                "such as a list or an ImageFolder, with at least as many images as shards."
            )


def _stack_images(items: list[Any]) -> tuple[Float[Tensor, "batch ..."], dict[str, Tensor]]:
    """The batch of ``items`` and the model's other forward keywords (SigLIP 2 NaFlex dicts' mask and shapes)."""
    if items and all(isinstance(item, Mapping) for item in items):
        return _stack_naflex(items)
    # Images are [C, H, W], video clips [frames, C, H, W]; a batch holds one kind.
    images = [item[0] if isinstance(item, (tuple, list)) else item for item in items]
    rank = images[0].ndim if images and isinstance(images[0], Tensor) else 3
    if rank not in (3, 4) or not all(isinstance(image, Tensor) and image.ndim == rank for image in images):
        found = next((image for image in images if not (isinstance(image, Tensor) and image.ndim == rank)), images[0])
        described = described_shape(found)
        raise InputShapeError(
            f"each image must be a preprocessed [C, H, W] tensor (a clip [frames, C, H, W] for video models), or a "
            f"(tensor, label) pair, got {described}; pass a dataset with transform=preprocess_for(model)."
        )
    return torch.stack(images), {}


def _stack_naflex(items: list[Mapping[str, Any]]) -> tuple[Float[Tensor, "batch max_patches dim"], dict[str, Tensor]]:
    keys = ("pixel_values", *MODEL_INPUTS)
    ranks = {"pixel_values": 2, "pixel_attention_mask": 1, "spatial_shapes": 1}
    for item in items:
        wrong = {key: described_shape(item.get(key)) for key in keys
                 if not isinstance(item.get(key), Tensor) or item[key].ndim != ranks[key]}
        if wrong:
            raise InputShapeError(
                f"a NaFlex item is one image's dict of pixel_values [max_patches, dim], pixel_attention_mask "
                f"[max_patches] and spatial_shapes [2] (Siglip2ImageProcessor's output, image by image); got {wrong}"
            )
    lengths = {tuple(item["pixel_values"].shape) for item in items}
    if len(lengths) > 1:
        raise InputShapeError(
            f"NaFlex items padded to different lengths {sorted(lengths)} cannot share a batch; give the processor one "
            "max_num_patches for all images"
        )
    pixel_values, *inputs = (torch.stack([item[key] for item in items]) for key in keys)
    return pixel_values, dict(zip(MODEL_INPUTS, inputs, strict=True))
