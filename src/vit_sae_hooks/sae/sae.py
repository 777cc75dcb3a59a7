"""The sparse autoencoder module: ReLU, TopK and JumpReLU, with SAELens-named hook points."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from vit_sae_hooks import kernels
from vit_sae_hooks._tl import HookedRootModule, HookPoint, has_hooks
from vit_sae_hooks.errors import ConfigError, InputShapeError
from vit_sae_hooks.sae.config import SAEConfig, dtype_name
from vit_sae_hooks.sae.formats import read_checkpoint, saelens
from vit_sae_hooks.sae.formats._io import checked_checkpoint
from vit_sae_hooks.sae.normalization import IDENTITY, NormStats, denormalize, depends_on_input, normalize


class SAE(HookedRootModule):
    """A sparse autoencoder ``x -> acts -> reconstruction`` for one hook of a vision transformer.

    Parameters: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and,
    for JumpReLU, ``threshold [d_sae]``. Computation, for input ``x [..., d_in]``::

        x_in  = normalise(x) - b_dec            (b_dec only if cfg.apply_b_dec_to_input)
        pre   = x_in @ W_enc + b_enc             -> hook_sae_acts_pre
        acts  = relu(pre) | topk(pre) | relu(pre) * (pre > relu(threshold))  -> hook_sae_acts_post
        recon = acts @ W_dec + b_dec             -> hook_sae_recons
        out   = denormalise(recon)               -> hook_sae_output

    ``hook_sae_input`` sees ``x`` before normalisation. With ``use_error_term`` set, ``forward`` adds
    ``hook_sae_error(x - clean_reconstruction)`` so that splicing the SAE leaves the model's output unchanged
    unless a hook edits the features. Normalisation statistics are returned (:class:`NormStats`), never kept
    on the module, so calls can interleave. Work happens in the parameters' dtype; ``forward`` returns the
    input's dtype.

    Example:
        >>> sae = SAE(SAEConfig(d_in=64, d_sae=256, architecture="topk", k=8)); out = sae(torch.randn(2, 17, 64))
    """

    W_enc: Float[Tensor, "d_in d_sae"]
    b_enc: Float[Tensor, " d_sae"]
    W_dec: Float[Tensor, "d_sae d_in"]
    b_dec: Float[Tensor, " d_in"]

    def __init__(self, cfg: SAEConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        factory = {"dtype": cfg.torch_dtype, "device": device}
        decoder = torch.empty(cfg.d_sae, cfg.d_in, **factory)
        nn.init.kaiming_uniform_(decoder)
        # Tied initialisation (encoder = decoder transposed), the usual starting point for training.
        self.W_dec = nn.Parameter(decoder)
        self.W_enc = nn.Parameter(decoder.T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **factory))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **factory))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, **factory))
        self.hook_sae_input = HookPoint()
        self.hook_sae_acts_pre = HookPoint()
        self.hook_sae_acts_post = HookPoint()
        self.hook_sae_recons = HookPoint()
        self.hook_sae_error = HookPoint()
        self.hook_sae_output = HookPoint()
        self.use_error_term = False
        self.setup()

    @property
    def d_in(self) -> int:
        """Width of the activations the SAE reads, e.g. ``sae.d_in == 768``."""
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        """Number of latents (features), e.g. ``sae.d_sae == 49152``."""
        return self.cfg.d_sae

    @property
    def hook_name(self) -> str | None:
        """The hook the SAE was trained on, e.g. ``"blocks.9.hook_resid_post"``."""
        return self.cfg.hook_name

    @property
    def token_set(self) -> str:
        """The tokens the SAE was trained on: ``"all"``, ``"cls"`` or ``"patches"``, e.g. ``sae.token_set == "cls"``."""
        return self.cfg.token_set

    @property
    def model_name(self) -> str | None:
        """The base model's hub id when known, e.g. ``"laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"``."""
        return self.cfg.model_name

    def norm_stats(self, x: Float[Tensor, "*batch d_in"]) -> NormStats:
        """The statistics of ``x`` that :meth:`decode` needs to undo this SAE's input normalisation.

        Example:
            >>> recon = sae.decode(edited_acts, sae.norm_stats(x))
        """
        self._check_last_dim(x, self.cfg.d_in, "input")
        return normalize(x.to(self.W_enc.dtype), self.cfg.normalize_activations, self.cfg.scaling_factor)[1]

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Feature activations of ``x`` (dense; zeros outside the active latents).

        Example:
            >>> acts = sae.encode(torch.randn(2, 50, 768))  # [2, 50, d_sae]
        """
        sae_in, _ = self._prepare_input(x, run_hooks=True)
        return self._activations(sae_in, run_hooks=True)

    def decode(
        self, acts: Float[Tensor, "*batch d_sae"], norm_stats: NormStats | None = None
    ) -> Float[Tensor, "*batch d_in"]:
        """Reconstruction from feature activations, de-normalised with ``norm_stats`` of the original input.

        ``norm_stats`` (from :meth:`norm_stats`) is required when the SAE normalises each input by its own
        statistics (``layer_norm``, ``constant_norm_rescale``).

        Example:
            >>> recon = sae.decode(sae.encode(x), sae.norm_stats(x))
        """
        self._check_last_dim(acts, self.cfg.d_sae, "feature activations")
        recon = self.hook_sae_recons(acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec)
        return denormalize(recon, self._stats_for_decode(norm_stats))

    def encode_topk(
        self, x: Float[Tensor, "*batch d_in"]
    ) -> tuple[Float[Tensor, "*batch k"], Int[Tensor, "*batch k"]]:
        """The ``k`` active latents of each input as ``(values, indices)``, without a dense ``[.., d_sae]`` result.

        Example:
            >>> values, indices = sae.encode_topk(torch.randn(1024, 768))  # each [1024, k]
        """
        if self.cfg.architecture != "topk":
            raise ConfigError(
                f"encode_topk needs a topk SAE; this one is {self.cfg.architecture!r}. Use encode() instead."
            )
        sae_in, _ = self._prepare_input(x, run_hooks=True)
        return self._sparse_code(sae_in)

    def decode_topk(
        self,
        values: Float[Tensor, "*batch k"],
        indices: Int[Tensor, "*batch k"],
        norm_stats: NormStats | None = None,
    ) -> Float[Tensor, "*batch d_in"]:
        """Reconstruction from a sparse code ``sum_j values[j] * W_dec[indices[j]] + b_dec``, de-normalised.

        Example:
            >>> recon = sae.decode_topk(*sae.encode_topk(x), sae.norm_stats(x))
        """
        if values.shape != indices.shape:
            raise InputShapeError(
                f"values {tuple(values.shape)} and indices {tuple(indices.shape)} must have the same shape "
                "[..., k]; pass the pair returned by encode_topk."
            )
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise InputShapeError(f"indices must be an integer tensor, got {indices.dtype}.")
        if not values.is_floating_point():
            raise InputShapeError(f"values must be a floating tensor, got {values.dtype}.")
        return denormalize(self._sparse_decode(values, indices, run_hooks=True), self._stats_for_decode(norm_stats))

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_in"]:
        """The SAE's reconstruction of ``x`` (plus the error term when ``use_error_term`` is set).

        TopK SAEs take a sparse path (no dense ``[.., d_sae]`` tensor) unless a hook is attached to
        ``hook_sae_acts_pre`` or ``hook_sae_acts_post``, which need the dense activations.

        Example:
            >>> recon = sae(torch.randn(2, 50, 768))
        """
        out = self._reconstruct(x, run_hooks=True)
        if self.use_error_term:
            clean = out if not self._hooks_change_reconstruction() else self._clean_reconstruction(x)
            error = self.hook_sae_error(x.to(out.dtype) - clean.detach())
            out = out + error
        return self.hook_sae_output(out).to(x.dtype)

    def _reconstruct(self, x: Tensor, run_hooks: bool) -> Tensor:
        sae_in, stats = self._prepare_input(x, run_hooks)
        sparse = self.cfg.architecture == "topk" and not (
            run_hooks and (has_hooks(self.hook_sae_acts_pre) or has_hooks(self.hook_sae_acts_post))
        )
        if sparse:
            recon = self._sparse_decode(*self._sparse_code(sae_in), run_hooks=run_hooks)
        else:
            acts = self._activations(sae_in, run_hooks)
            recon = acts @ self.W_dec + self.b_dec
            if run_hooks:
                recon = self.hook_sae_recons(recon)
        return denormalize(recon, stats)

    def _clean_reconstruction(self, x: Tensor) -> Tensor:
        # The error term must measure the unedited SAE, so hooks that edit features do not leak into it.
        with torch.no_grad():
            return self._reconstruct(x, run_hooks=False)

    def _hooks_change_reconstruction(self) -> bool:
        inner = (self.hook_sae_input, self.hook_sae_acts_pre, self.hook_sae_acts_post, self.hook_sae_recons)
        return any(has_hooks(hook_point) for hook_point in inner)

    def _prepare_input(self, x: Tensor, run_hooks: bool) -> tuple[Tensor, NormStats]:
        self._check_last_dim(x, self.cfg.d_in, "input")
        x = x.to(self.W_enc.dtype)
        if run_hooks:
            x = self.hook_sae_input(x)
        sae_in, stats = normalize(x, self.cfg.normalize_activations, self.cfg.scaling_factor)
        if self.cfg.apply_b_dec_to_input:
            sae_in = sae_in - self.b_dec
        return sae_in, stats

    def _activations(self, sae_in: Tensor, run_hooks: bool) -> Tensor:
        if self.cfg.architecture == "topk" and not (run_hooks and has_hooks(self.hook_sae_acts_pre)):
            values, indices = self._sparse_code(sae_in)
            acts = torch.zeros(*sae_in.shape[:-1], self.cfg.d_sae, dtype=values.dtype, device=values.device)
            acts = acts.scatter(-1, indices, values)
        else:
            pre = sae_in @ self.W_enc + self.b_enc
            if run_hooks:
                pre = self.hook_sae_acts_pre(pre)
            acts = self._activation_function(pre)
        return self.hook_sae_acts_post(acts) if run_hooks else acts

    def _activation_function(self, pre: Tensor) -> Tensor:
        if self.cfg.architecture == "standard":
            return F.relu(pre)
        if self.cfg.architecture == "jumprelu":
            return F.relu(pre) * (pre > F.relu(self.threshold))
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        if self.cfg.topk_apply_relu:
            values = F.relu(values)
        return torch.zeros_like(pre).scatter(-1, indices, values)

    def _sparse_code(self, sae_in: Tensor) -> tuple[Tensor, Tensor]:
        return kernels.encode_topk(sae_in, self.W_enc, self.b_enc, self.cfg.k, apply_relu=self.cfg.topk_apply_relu)

    def _sparse_decode(self, values: Tensor, indices: Tensor, run_hooks: bool) -> Tensor:
        recon = kernels.decode_topk(values.to(self.W_dec.dtype), indices, self.W_dec, self.b_dec)
        return self.hook_sae_recons(recon) if run_hooks else recon

    def _stats_for_decode(self, norm_stats: NormStats | None) -> NormStats:
        if norm_stats is not None:
            return norm_stats
        method = self.cfg.normalize_activations
        if depends_on_input(method):
            raise ConfigError(
                f"this SAE normalises each input ({method!r}), so decoding needs that input's statistics: "
                "pass norm_stats=sae.norm_stats(x), or call sae(x) for the full reconstruction."
            )
        if method == "scaling_factor":
            return NormStats(shift=None, scale=1.0 / self.cfg.scaling_factor)
        return IDENTITY

    def _check_last_dim(self, tensor: Tensor, size: int, what: str) -> None:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            raise InputShapeError(
                f"{what} must be a floating-point tensor, got {getattr(tensor, 'dtype', type(tensor).__name__)}."
            )
        if tensor.ndim == 0 or tensor.shape[-1] != size:
            raise InputShapeError(
                f"{what} has shape {tuple(tensor.shape)}, but this SAE (d_in={self.cfg.d_in}, d_sae="
                f"{self.cfg.d_sae}, hook {self.cfg.hook_name!r}) needs [..., {size}]. Check that the "
                "activations come from the hook the SAE was trained on."
            )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SAE:
        """The SAE stored at ``path`` in any supported layout (Prisma, SAELens, sparsify, clipscope, ours).

        ``path`` is a checkpoint folder or its weights file; the layout is detected from the files.

        Example:
            >>> sae = SAE.load("tests/fixtures/prisma_relu_layernorm")
        """
        config, state_dict = read_checkpoint(Path(path))
        return cls.from_state_dict(config, state_dict, device=device, dtype=dtype)

    @classmethod
    def from_state_dict(
        cls,
        config: SAEConfig,
        state_dict: dict[str, Tensor],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SAE:
        """An SAE built from ``config`` holding exactly the tensors in ``state_dict`` (no copy of random init).

        Example:
            >>> sae = SAE.from_state_dict(other.cfg, other.state_dict())
        """
        if dtype is not None:
            config = replace(config, dtype=dtype_name(dtype))
        checked = checked_checkpoint(config, state_dict, source="the given state_dict")
        with torch.device("meta"):
            sae = cls(config)
        tensors = {name: tensor.to(device=device) for name, tensor in checked.state_dict.items()}
        sae.load_state_dict(tensors, strict=True, assign=True)
        return sae

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> SAE:
        """A published SAE by registry short name, hub id (``owner/repo[/sub/folder][/file.pt]``) or local path.

        Hub files come from the Hugging Face cache when offline. Registry entries also fill metadata the
        checkpoint does not record (e.g. clipscope's base model).

        Example:
            >>> sae = SAE.from_pretrained("prisma/clip-b32/all-patches/resid_post/9")
        """
        from vit_sae_hooks import pretrained

        entry = pretrained.lookup(name)
        if entry is not None:
            location = entry.resolve(revision=revision, cache_dir=cache_dir)
        else:
            location = pretrained.resolve_location(name, revision=revision, cache_dir=cache_dir)
        sae = cls.load(location, device=device, dtype=dtype)
        if entry is not None:
            sae.cfg = entry.fill_metadata(sae.cfg)
        return sae

    def save(self, path: str | os.PathLike) -> Path:
        """Write the SAE to the folder ``path`` in SAELens layout (``cfg.json`` + ``sae_weights.safetensors``).

        Loading the folder back gives identical weights and config.

        Example:
            >>> folder = sae.save("my_sae")
        """
        folder = Path(path)
        # The parameters may have been cast with .to(dtype) since the config was made; record what is saved.
        config = replace(self.cfg, dtype=dtype_name(self.W_enc.dtype))
        saelens.write(config, self.state_dict(), folder)
        return folder

    def extra_repr(self) -> str:
        cfg = self.cfg
        parts = [f"d_in={cfg.d_in}", f"d_sae={cfg.d_sae}", f"architecture={cfg.architecture!r}"]
        if cfg.k is not None:
            parts.append(f"k={cfg.k}")
        parts += [f"hook_name={cfg.hook_name!r}", f"token_set={cfg.token_set!r}"]
        return ", ".join(parts)
