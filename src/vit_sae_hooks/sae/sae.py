"""The sparse autoencoder module every architecture shares: hook points, input normalisation, the error
term, sparse and dense paths, loading and saving. Each architecture is a subclass in ``sae/architectures/``
that supplies its activation function, its extra parameters, its training loss terms and its SAELens
mapping; ``SAE(cfg)`` builds the subclass ``cfg.architecture`` names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from vit_sae_hooks import kernels
from vit_sae_hooks._tl import HookedRootModule, HookPoint, has_hooks
from vit_sae_hooks.errors import ConfigError, InputShapeError
from vit_sae_hooks.sae import pretrained
from vit_sae_hooks.sae.config import SAEConfig, dtype_name
from vit_sae_hooks.sae.formats import read_checkpoint, saelens
from vit_sae_hooks.sae.formats._io import checked_checkpoint
from vit_sae_hooks.sae.normalization import IDENTITY, NormStats, denormalize, depends_on_input, normalize
from vit_sae_hooks.sae.registry import sae_class


@dataclass
class TrainingTerms:
    """One training batch through an SAE, in the normalised input space: what the trainer's loss is made of.

    ``sparsity_loss`` is multiplied by the architecture's scheduled coefficient, ``aux_loss`` by the
    auxiliary coefficient, and ``extra_loss`` (Matryoshka's inner prefixes, gated's gate-path reconstruction)
    is added as is; all are in units of the data's variance, like the reconstruction loss. ``fired`` marks
    latents active on some token, ``n_active`` counts active (token, latent) pairs.
    """

    reconstruction: Float[Tensor, "n d_out"]
    sparsity_loss: Float[Tensor, ""]
    aux_loss: Float[Tensor, ""]
    fired: Bool[Tensor, " d_sae"]
    n_active: Float[Tensor, ""]
    extra_loss: Float[Tensor, ""] | float = 0.0


@dataclass
class TrainingBatch:
    """What the trainer knows about a batch that an architecture's loss terms need.

    ``dead_latents`` are the latents that have not fired for ``dead_tokens`` tokens (refreshed by the trainer
    at its own pace, so the loss needs no host synchronisation); ``variance`` is the data's variance per token
    in the normalised space; ``settings`` is the run's :class:`~vit_sae_hooks.training.TrainConfig`.
    """

    dead_latents: Int[Tensor, " n_dead"]
    variance: float
    settings: Any


class SAE(HookedRootModule):
    """A sparse autoencoder ``x -> acts -> reconstruction`` for one hook of a vision transformer.

    Parameters: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]`` plus the
    architecture's own (JumpReLU's ``threshold [d_sae]``); ``d_out = d_in`` except for transcoders.
    Computation, for input ``x [..., d_in]``::

        x_in  = normalise(x) - b_dec            (b_dec only if cfg.apply_b_dec_to_input)
        pre   = x_in @ W_enc + b_enc             -> hook_sae_acts_pre
        acts  = activation(pre)                  -> hook_sae_acts_post   (per architecture, docs/sae.md)
        recon = acts @ W_dec + b_dec             -> hook_sae_recons
        out   = denormalise(recon [+ x @ W_skip.T])   -> hook_sae_output  (the skip: transcoders with one)

    ``hook_sae_input`` sees ``x`` before normalisation. With ``use_error_term`` set, ``forward`` adds
    ``hook_sae_error(target - clean_reconstruction)`` (``target`` is ``x`` itself for an SAE, the true output
    for a transcoder) so that splicing leaves the model's output unchanged unless a hook edits the features;
    the error keeps the clean reconstruction's gradient, so an unedited splice also leaves the model's
    gradients unchanged, and a hook that edits the features sees the metric's gradient through the decoder.
    Normalisation statistics are returned (:class:`NormStats`), never kept on the module, so calls can interleave.
    Work happens in the parameters' dtype; ``forward`` returns the input's dtype.

    Example:
        >>> sae = SAE(SAEConfig(d_in=64, d_sae=256, architecture="topk", k=8)); out = sae(torch.randn(2, 17, 64))
    """

    W_enc: Float[Tensor, "d_in d_sae"]
    b_enc: Float[Tensor, " d_sae"]
    W_dec: Float[Tensor, "d_sae d_in"]
    b_dec: Float[Tensor, " d_in"]

    # The name configs and checkpoints use for the architecture (the registry key).
    architecture: ClassVar[str] = ""
    # Names among extra_parameter_shapes kept as buffers: saved and loaded, never given a gradient.
    buffer_names: ClassVar[tuple[str, ...]] = ()
    # Whether the architecture has a k-sparse code (encode_topk / decode_topk, no dense [.., d_sae] tensor).
    has_sparse_code: ClassVar[bool] = False
    # Whether the config's k (active latents per token) means something for the architecture.
    uses_k: ClassVar[bool] = False
    # Whether training_terms is implemented (architectures that are only loaded, not trained, say False).
    trainable: ClassVar[bool] = True
    # The TrainConfig field that scales sparsity_loss during training (None: the loss has no sparsity term).
    sparsity_coefficient_field: ClassVar[str | None] = None
    # The architecture name SAELens writes for it.
    saelens_architecture: ClassVar[str] = ""

    def __new__(cls, cfg: SAEConfig | None = None, *args: Any, **kwargs: Any) -> SAE:  # noqa: PYI034 - a subclass
        # SAE(cfg) builds the class of cfg.architecture, so callers never pick the subclass by hand.
        implementation = cls
        if cls is SAE:
            if cfg is None:
                raise ConfigError("SAE(cfg) needs an SAEConfig, e.g. SAE(SAEConfig(d_in=768, d_sae=16384)).")
            implementation = sae_class(cfg)
        return super().__new__(implementation)

    def __init__(self, cfg: SAEConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        if cfg.architecture != self.architecture:
            raise ConfigError(
                f"{type(self).__name__} implements architecture {self.architecture!r}, but the config asks for "
                f"{cfg.architecture!r}; build it with SAE(cfg)."
            )
        self.cfg = cfg
        factory = {"dtype": cfg.torch_dtype, "device": device}
        decoder = torch.empty(cfg.d_sae, cfg.output_width, **factory)
        nn.init.kaiming_uniform_(decoder)
        self.W_dec = nn.Parameter(decoder)
        if cfg.output_width == cfg.d_in:
            # Tied initialisation (encoder = decoder transposed), the usual starting point for training.
            self.W_enc = nn.Parameter(decoder.T.contiguous())
        else:
            self.W_enc = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(cfg.d_sae, cfg.d_in, **factory)).T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **factory))
        self.b_dec = nn.Parameter(torch.zeros(cfg.output_width, **factory))
        for name, shape in self.extra_parameter_shapes(cfg).items():
            if name in self.buffer_names:
                self.register_buffer(name, torch.zeros(shape, **factory))
            else:
                self.register_parameter(name, nn.Parameter(torch.zeros(shape, **factory)))
        self.hook_sae_input = HookPoint()
        self.hook_sae_acts_pre = HookPoint()
        self.hook_sae_acts_post = HookPoint()
        self.hook_sae_recons = HookPoint()
        self.hook_sae_error = HookPoint()
        self.hook_sae_output = HookPoint()
        self.use_error_term = False
        self.setup()

    # ------------------------------------------------------------------ what an architecture supplies
    @classmethod
    def check_config(cls, cfg: SAEConfig) -> None:
        """Raise :class:`ConfigError` unless ``cfg``'s architecture-specific fields make sense for this class."""
        if cfg.k is not None:
            raise ConfigError(
                f"k={cfg.k!r} is only meaningful for architectures 'topk', 'batchtopk' and 'matryoshka', "
                f"not {cfg.architecture!r}."
            )
        if cfg.prefixes is not None:
            raise ConfigError(
                f"prefixes={list(cfg.prefixes)!r} belong to architecture 'matryoshka', not {cfg.architecture!r}."
            )

    @classmethod
    def extra_parameter_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """The architecture's parameters beyond ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, with their shapes."""
        return {}

    @classmethod
    def parameter_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Every parameter an SAE with ``cfg`` has, with its shape (what a checkpoint must hold).

        Example:
            >>> SAE.parameter_shapes(SAEConfig(d_in=8, d_sae=32))["W_enc"]
            (8, 32)
        """
        own = sae_class(cfg)
        d_out = cfg.output_width
        shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, d_out), "b_dec": (d_out,)}
        return {**shapes, **own.extra_parameter_shapes(cfg)}

    @classmethod
    def default_learning_rate(cls, d_sae: int) -> float:
        """The peak learning rate training uses for ``d_sae`` latents when none is given."""
        return 4e-4

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        """The feature activations for pre-activations ``pre`` (dense)."""
        raise NotImplementedError(f"{type(self).__name__} does not define its activation function")

    def sparse_code(self, sae_in: Float[Tensor, "*batch d_in"]) -> tuple[Float[Tensor, "*batch k"], Int[Tensor, "*batch k"]]:
        """``(values, indices)`` of the active latents of the (normalised, centred) encoder input."""
        raise ConfigError(
            f"a sparse (values, indices) code needs a topk SAE; this one is {self.cfg.architecture!r}. Use encode() instead."
        )

    def training_terms(
        self, inputs: Float[Tensor, "n d_in"], target: Float[Tensor, "n d_out"], batch: TrainingBatch
    ) -> TrainingTerms:
        """The reconstruction of ``target`` from ``inputs`` (both normalised; ``target`` is ``inputs`` for an SAE,
        the output hook's activations for a transcoder) and the loss terms of one training batch."""
        raise NotImplementedError(f"{type(self).__name__} cannot be trained")


    def prepare_for_training(self, settings: Any) -> None:
        """Initialise the architecture's own parameters before training (``settings``: a TrainConfig)."""

    def after_optimizer_step(self) -> None:
        """Keep the architecture's parameters in their valid range after each optimiser step."""

    @classmethod
    def saelens_fields(cls, cfg: SAEConfig) -> dict[str, Any]:
        """The architecture's own ``cfg.json`` entries in SAELens's layout (beyond the shared ones)."""
        return {}

    @classmethod
    def saelens_architecture_for(cls, cfg: SAEConfig) -> str:
        """The ``architecture`` SAELens's ``cfg.json`` names for an SAE with ``cfg``."""
        return cls.saelens_architecture

    @classmethod
    def saelens_metadata(cls, cfg: SAEConfig) -> dict[str, Any]:
        """The architecture's own entries of SAELens's ``metadata`` block (e.g. BatchTopK's training architecture)."""
        return {}

    @classmethod
    def saelens_weights(cls, cfg: SAEConfig, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """This class's parameters under SAELens's names (e.g. gated's ``b_enc`` is SAELens's ``b_mag``)."""
        return tensors

    @classmethod
    def saelens_difference(cls, cfg: SAEConfig) -> str | None:
        """What SAELens would compute differently for an SAE with ``cfg`` (None when it computes the same)."""
        return None

    @classmethod
    def read_saelens_fields(cls, values: dict[str, Any], path: Path) -> dict[str, Any]:
        """The :class:`SAEConfig` fields this architecture reads from a SAELens ``cfg.json``."""
        return {}

    @classmethod
    def fold_saelens_weights(cls, values: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
        """SAELens's stored tensors turned into this class's plain parameters (e.g. folded rescalings)."""
        return tensors

    @property
    def d_in(self) -> int:
        """Width of the activations the SAE reads, e.g. ``sae.d_in == 768``."""
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        """Number of latents (features), e.g. ``sae.d_sae == 49152``."""
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        """Width of the reconstruction: ``d_in`` for an SAE, the output hook's width for a transcoder."""
        return self.cfg.output_width

    @property
    def is_transcoder(self) -> bool:
        """Whether this predicts another hook (``hook_name_out``) from ``hook_name``, rather than reconstructing it."""
        return self.cfg.is_transcoder

    @property
    def hook_name(self) -> str | None:
        """The hook the SAE was trained on, e.g. ``"blocks.9.hook_resid_post"``."""
        return self.cfg.hook_name

    @property
    def hook_name_out(self) -> str | None:
        """The hook a transcoder predicts, e.g. ``"blocks.9.hook_mlp_out"`` (``None`` for an SAE)."""
        return self.cfg.hook_name_out

    @property
    def output_hook_name(self) -> str | None:
        """The hook the SAE writes when spliced, where its hooks appear (``{output_hook_name}.hook_sae_acts_post``):
        ``hook_name`` for an SAE, ``hook_name_out`` for a transcoder.

        Example:
            >>> transcoder.output_hook_name
            'blocks.5.hook_mlp_out'
        """
        return self.cfg.hook_name_out if self.is_transcoder else self.cfg.hook_name

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
    ) -> Float[Tensor, "*batch d_out"]:
        """Reconstruction from feature activations, de-normalised with ``norm_stats`` of the original input.

        ``norm_stats`` (from :meth:`norm_stats`) is required when the SAE normalises each input by its own
        statistics (``layer_norm``, ``constant_norm_rescale``). A transcoder's skip term needs the input, so
        it is not part of ``decode`` (``forward`` adds it).

        Example:
            >>> recon = sae.decode(sae.encode(x), sae.norm_stats(x))
        """
        self._check_last_dim(acts, self.cfg.d_sae, "feature activations")
        recon = self.hook_sae_recons(self._decode_dense(acts.to(self.W_dec.dtype)))
        return denormalize(recon, self._stats_for_decode(norm_stats))

    def encode_topk(
        self, x: Float[Tensor, "*batch d_in"]
    ) -> tuple[Float[Tensor, "*batch k"], Int[Tensor, "*batch k"]]:
        """The ``k`` active latents of each input as ``(values, indices)``, without a dense ``[.., d_sae]`` result.

        Example:
            >>> values, indices = sae.encode_topk(torch.randn(1024, 768))  # each [1024, k]
        """
        if not self.has_sparse_code:
            raise ConfigError(
                f"encode_topk needs a topk SAE; this one is {self.cfg.architecture!r}. Use encode() instead."
            )
        sae_in, _ = self._prepare_input(x, run_hooks=True)
        return self.sparse_code(sae_in)

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

    def forward(
        self, x: Float[Tensor, "*batch d_in"], target: Float[Tensor, "*batch d_out"] | None = None
    ) -> Float[Tensor, "*batch d_out"]:
        """The SAE's reconstruction of ``x`` (plus the error term when ``use_error_term`` is set).

        For a transcoder this is its prediction of the output hook, and the error term needs that hook's
        true activation as ``target``. TopK SAEs take a sparse path (no dense ``[.., d_sae]`` tensor) unless a
        hook is attached to ``hook_sae_acts_pre`` or ``hook_sae_acts_post``, which need the dense activations.

        Example:
            >>> recon = sae(torch.randn(2, 50, 768))
        """
        out = self._reconstruct(x, run_hooks=True)
        if self.use_error_term:
            target = self._error_target(x, target)
            # The clean reconstruction keeps its gradient, so that gradients through an unedited splice are
            # the model's own (d out / d x = identity), as circuits and attribution need.
            clean = out if not self._hooks_change_reconstruction() else self._clean_reconstruction(x)
            error = self.hook_sae_error(target.to(out.dtype) - clean)
            out = out + error
        return self.hook_sae_output(out).to(x.dtype)

    def reconstruct(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
        """The reconstruction of ``x`` (a transcoder's prediction, skip term included), without the error term
        and without running the SAE's hooks.

        Example:
            >>> prediction = transcoder.reconstruct(mlp_inputs)  # [..., d_out]
        """
        return self._reconstruct(x, run_hooks=False)

    def _error_target(self, x: Tensor, target: Tensor | None) -> Tensor:
        if target is None:
            if self.is_transcoder:
                raise ConfigError(
                    "a transcoder's error term is the true output minus its prediction: pass the output hook's "
                    f"activation as sae(x, target=...) ({self.cfg.hook_name_out!r}), or set use_error_term=False."
                )
            return x
        self._check_last_dim(target, self.d_out, "target")
        if target.shape[:-1] != x.shape[:-1]:
            raise InputShapeError(
                f"target has shape {tuple(target.shape)} but the input has {tuple(x.shape)}; they must cover the "
                "same tokens (the same leading dimensions)."
            )
        return target

    def _reconstruct(self, x: Tensor, run_hooks: bool) -> Tensor:
        x = self._checked_input(x, run_hooks)
        normalised, stats = normalize(x, self.cfg.normalize_activations, self.cfg.scaling_factor)
        sae_in = self.encoder_input(normalised)
        sparse = self.has_sparse_code and not (
            run_hooks and (has_hooks(self.hook_sae_acts_pre) or has_hooks(self.hook_sae_acts_post))
        )
        if sparse:
            recon = self._sparse_decode(*self.sparse_code(sae_in), run_hooks=run_hooks)
        else:
            recon = self._decode_dense(self._activations(sae_in, run_hooks))
            if run_hooks:
                recon = self.hook_sae_recons(recon)
        return denormalize(self.add_skip(recon, x), stats)

    def add_skip(self, recon: Float[Tensor, "*batch d_out"], x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
        """``recon`` plus the linear skip term of the input ``x`` (transcoders with a skip connection only)."""
        return recon

    def _clean_reconstruction(self, x: Tensor) -> Tensor:
        # The error term must measure the unedited SAE, so hooks that edit features do not leak into it.
        return self._reconstruct(x, run_hooks=False)

    def _hooks_change_reconstruction(self) -> bool:
        inner = (self.hook_sae_input, self.hook_sae_acts_pre, self.hook_sae_acts_post, self.hook_sae_recons)
        return any(has_hooks(hook_point) for hook_point in inner)

    def normalised_input(self, x: Float[Tensor, "*batch d_in"]) -> tuple[Float[Tensor, "*batch d_in"], NormStats]:
        """``x`` in the SAE's normalised space (what the reconstruction aims at) and the statistics to undo it.

        Example:
            >>> target, stats = sae.normalised_input(x)
        """
        self._check_last_dim(x, self.cfg.d_in, "input")
        return normalize(x.to(self.W_enc.dtype), self.cfg.normalize_activations, self.cfg.scaling_factor)

    def encoder_input(self, normalised: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_in"]:
        """What the encoder multiplies: the normalised input, minus ``b_dec`` when the config says so."""
        return normalised - self.b_dec if self.cfg.apply_b_dec_to_input else normalised

    def pre_activations(self, sae_in: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """``sae_in @ W_enc + b_enc``."""
        return sae_in @ self.W_enc + self.b_enc

    def _checked_input(self, x: Tensor, run_hooks: bool) -> Tensor:
        self._check_last_dim(x, self.cfg.d_in, "input")
        x = x.to(self.W_enc.dtype)
        return self.hook_sae_input(x) if run_hooks else x

    def _prepare_input(self, x: Tensor, run_hooks: bool) -> tuple[Tensor, NormStats]:
        normalised, stats = normalize(self._checked_input(x, run_hooks), self.cfg.normalize_activations, self.cfg.scaling_factor)
        return self.encoder_input(normalised), stats

    def _activations(self, sae_in: Tensor, run_hooks: bool) -> Tensor:
        if self.has_sparse_code and not (run_hooks and has_hooks(self.hook_sae_acts_pre)):
            values, indices = self.sparse_code(sae_in)
            acts = torch.zeros(*sae_in.shape[:-1], self.cfg.d_sae, dtype=values.dtype, device=values.device)
            acts = acts.scatter(-1, indices, values)
        else:
            pre = self.pre_activations(sae_in)
            if run_hooks:
                pre = self.hook_sae_acts_pre(pre)
            acts = self.activation(pre)
        return self.hook_sae_acts_post(acts) if run_hooks else acts

    def _decode_dense(self, acts: Tensor) -> Tensor:
        return kernels.decode_dense_or_sparse(acts, self.W_dec, self.b_dec)

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
        name: str | os.PathLike,
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
        name = os.fspath(name)
        entry = pretrained.lookup(name)
        if entry is not None:
            location = entry.resolve(revision=revision, cache_dir=cache_dir)
        else:
            location = pretrained.resolve_location(name, revision=revision, cache_dir=cache_dir)
        sae = cls.load(location, device=device, dtype=dtype)
        if entry is not None:
            sae.cfg = entry.fill_metadata(sae.cfg)
        return sae

    def save(self, path: str | os.PathLike, allow_lossy: bool = False) -> Path:
        """Write the SAE to the folder ``path`` in SAELens layout (``cfg.json`` + ``sae_weights.safetensors``).

        SAELens loads the folder and computes the same features; a fixed scaling factor is folded into the
        weights (as SAELens does), so the reloaded SAE has ``normalize_activations="none"`` and the same outputs.
        What SAELens cannot represent (a TopK SAE without ReLU) is refused with the reason, unless
        ``allow_lossy=True`` (this library then still reads it back exactly).

        Example:
            >>> folder = sae.save("my_sae")
        """
        folder = Path(path)
        # The parameters may have been cast with .to(dtype) since the config was made; record what is saved.
        config = replace(self.cfg, dtype=dtype_name(self.W_enc.dtype))
        saelens.write(config, self.state_dict(), folder, allow_lossy=allow_lossy)
        return folder

    def to_saelens(self, allow_lossy: bool = False) -> Any:
        """This SAE as a ``sae_lens.SAE`` that computes the same features (needs the sae-lens package).

        Refuses what SAELens cannot represent (see :meth:`save`) unless ``allow_lossy``.

        Example:
            >>> theirs = sae.to_saelens(); theirs.encode(x)  # == sae.encode(x)
        """
        try:
            import sae_lens
        except ImportError as error:
            raise ConfigError("to_saelens needs the sae-lens package: pip install sae-lens") from error
        config = replace(self.cfg, dtype=dtype_name(self.W_enc.dtype))
        values, tensors = saelens.saelens_form(config, self.state_dict(), allow_lossy)
        values["device"] = str(self.W_enc.device)
        theirs = sae_lens.SAE.from_dict(values)
        theirs.load_state_dict({name: tensor.to(self.W_enc.device) for name, tensor in tensors.items()})
        return theirs

    @classmethod
    def from_saelens(cls, theirs: Any) -> SAE:
        """The ``sae_lens.SAE`` ``theirs`` as this library's SAE, computing the same features.

        Example:
            >>> sae = SAE.from_saelens(sae_lens.SAE.load_from_disk("their_sae"))
        """
        if not saelens.is_saelens_sae(theirs):
            raise ConfigError(f"from_saelens takes a sae_lens.SAE, got {type(theirs).__name__}")
        checkpoint = saelens.parse(theirs.cfg.to_dict(), dict(theirs.state_dict()), f"the {type(theirs).__name__}")
        return cls.from_state_dict(checkpoint.config, checkpoint.state_dict, device=theirs.W_enc.device)

    def fold_input_affine(
        self, shift: float | Float[Tensor, " d_in"], scale: float | Float[Tensor, " d_in"]
    ) -> SAE:
        """The same SAE reading raw activations ``x``, for one trained on ``(x - shift) / scale`` (and decoding
        back to raw units): every normalisation constant folded into the weights.

        saev's first releases were trained on ``(x - dataset mean) / scalar`` with statistics that are not in
        their files; with the statistics at hand, this gives an SAE that takes the model's activations as they
        are. ``shift`` and ``scale`` are numbers or ``[d_in]`` vectors (``scale > 0``).

        Example:
            >>> raw = sae.fold_input_affine(shift=act_mean, scale=act_scalar)
        """
        if self.is_transcoder or self.cfg.normalize_activations != "none":
            found = "a transcoder" if self.is_transcoder else f"normalize_activations={self.cfg.normalize_activations!r}"
            raise ConfigError(
                "fold_input_affine applies to SAEs that reconstruct their input and do no normalisation of their own "
                f"(normalize_activations='none'); this one is {found}."
            )
        state = {name: tensor.detach().clone() for name, tensor in self.state_dict().items()}
        W_enc = state["W_enc"]
        factory = {"dtype": W_enc.dtype, "device": W_enc.device}
        shift = torch.as_tensor(shift, **factory).expand(self.d_in)
        scale = torch.as_tensor(scale, **factory).expand(self.d_in)
        if not bool(torch.isfinite(shift).all()) or not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
            raise ConfigError("fold_input_affine needs a finite shift and a finite, positive scale.")
        # encoder input (x - shift) / scale - b_dec  ==  x / scale - offset
        offset = shift / scale + (state["b_dec"] if self.cfg.apply_b_dec_to_input else 0)
        state["W_enc"] = W_enc / scale[:, None]
        self._fold_encoder_offset(state, offset @ W_enc)
        state["W_dec"] = state["W_dec"] * scale
        state["b_dec"] = state["b_dec"] * scale + shift
        config = replace(self.cfg, apply_b_dec_to_input=False)
        return type(self).from_state_dict(config, state, device=W_enc.device)

    @classmethod
    def _fold_encoder_offset(cls, state: dict[str, Tensor], offset: Float[Tensor, " d_sae"]) -> None:
        """Fold ``- offset`` (``offset = c @ W_enc`` for an input shifted by ``c``) into the encoder's biases."""
        state["b_enc"] = state["b_enc"] - offset

    def extra_repr(self) -> str:
        cfg = self.cfg
        parts = [f"d_in={cfg.d_in}", f"d_sae={cfg.d_sae}", f"architecture={cfg.architecture!r}"]
        if cfg.k is not None:
            parts.append(f"k={cfg.k}")
        if cfg.prefixes is not None:
            parts.append(f"prefixes={list(cfg.prefixes)}")
        parts.append(f"hook_name={cfg.hook_name!r}")
        if cfg.is_transcoder:
            parts += [f"d_out={cfg.d_out}", f"hook_name_out={cfg.hook_name_out!r}", f"skip_connection={cfg.skip_connection}"]
        parts.append(f"token_set={cfg.token_set!r}")
        return ", ".join(parts)
