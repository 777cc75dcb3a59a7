"""Everything that decides how an SAE is trained, as one validated dataclass; ``vit-sae train`` makes one
command-line option per field from the same declarations (help text included)."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any, Literal

from vit_sae_hooks.checks import config_from_dict, finite_number, non_negative_int, positive_int
from vit_sae_hooks.cli_support import option
from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.sae.registry import architecture_class, architecture_names

BDecInit = Literal["geometric_median", "mean", "zeros"]
B_DEC_INITS = ("geometric_median", "mean", "zeros")
TrainableNormalization = Literal["none", "scaling_factor"]
TRAINABLE_NORMALIZATIONS = ("none", "scaling_factor")
# What users call the standard architecture on the command line.
ARCHITECTURE_ALIASES = {"relu": "standard"}


def _architecture_choices() -> tuple[str, ...]:
    return (*architecture_names(), *ARCHITECTURE_ALIASES, "transcoder")


@dataclass
class TrainConfig:
    """Architecture, optimiser, schedule and bookkeeping of one SAE training run.

    ``batch_size`` and ``tokens_budget`` count tokens over all processes. ``lr=None`` picks the
    architecture's usual rate: ``2e-4 / sqrt(d_sae / 2**14)`` for TopK (Gao et al.), ``4e-4`` otherwise.
    TopK adds the AuxK loss (``aux_coefficient`` · reconstruction of the residual by the ``k_aux`` most
    active dead latents, scaled down while fewer than ``k_aux`` are dead); a latent is dead after
    ``dead_tokens`` tokens without firing. ReLU (``"standard"``) pays ``l1_coefficient`` · ‖f‖₁/σ and
    JumpReLU ``l0_coefficient`` · L0, both ramped up over ``sparsity_warmup_steps``. ``data_shards`` is
    how the data is split (default: one shard per process); runs with the same ``data_shards`` see the
    same batches whatever the number of processes. Each field's help text says what it does.

    Example:
        >>> config = TrainConfig(architecture="topk", k=32, expansion_factor=16, tokens_budget=2_000_000)
    """

    architecture: str = option("topk", "SAE architecture ('relu' is 'standard')", flags=("--arch",),
                               choices=_architecture_choices, sweep=True)
    k: int | None = option(32, "active latents per token (topk; on average for batchtopk and matryoshka)", sweep=True)
    expansion_factor: int = option(16, "d_sae = expansion_factor * d_in", flags=("--expansion",), sweep=True)
    d_sae: int | None = option(None, "number of latents, overriding expansion_factor", sweep=True)
    prefixes: tuple[int, ...] | None = option(
        None, "matryoshka: cumulative prefix sizes, e.g. 128,512,2048 (d_sae is added as the last)")
    batchtopk_threshold_lr: float = option(
        0.01, "batchtopk/matryoshka: rate of the running inference threshold (SAELens's topk_threshold_lr)")
    skip_connection: bool = option(False, "transcoders: a linear skip term x @ W_skip.T beside the sparse code")
    normalize_activations: TrainableNormalization = option(
        "none", "'scaling_factor' rescales inputs to an average norm of sqrt(d_in) with one fixed factor",
        flags=("--normalize",))
    b_dec_init: BDecInit = option("geometric_median", "initial decoder bias: the data's geometric median, mean or zeros")
    init_tokens: int = option(16384, "tokens used to initialise b_dec and measure the data's variance")
    batch_size: int = option(4096, "tokens per optimiser step, over all processes")
    tokens_budget: int = option(2_000_000, "training tokens over all processes, e.g. 2e6")
    lr: float | None = option(None, "peak learning rate (none: the architecture's default for d_sae)")
    adam_betas: tuple[float, float] = option((0.9, 0.999), "Adam's beta1 and beta2")
    warmup_steps: int = option(100, "steps of linear learning-rate warm-up")
    decay_fraction: float = option(0.2, "fraction of the steps at the end over which the learning rate decays to 0")
    grad_clip: float = option(1.0, "clip the gradient's global norm to this (0: no clipping)")
    k_aux: int | None = option(None, "dead latents in the AuxK loss (topk; none: d_in / 2)")
    aux_coefficient: float = option(1 / 32, "weight of the AuxK loss (topk)")
    dead_tokens: int = option(10_000_000, "tokens without firing after which a latent counts as dead")
    l1_coefficient: float = option(5.0, "sparsity penalty of relu SAEs (L1 / sigma)")
    l0_coefficient: float = option(0.01, "sparsity penalty of jumprelu SAEs (L0)")
    sparsity_warmup_steps: int = option(1000, "steps over which the sparsity penalty ramps up linearly")
    jumprelu_bandwidth: float = option(0.001, "width of the straight-through kernel around the threshold (jumprelu)")
    jumprelu_init_threshold: float = option(0.001, "initial threshold of every latent (jumprelu)")
    seed: int = option(0, "seed of the initialisation and the data order")
    data_shards: int | None = option(None, "split the data into this many shards (none: one per process)")
    checkpoint_every: int = option(1000, "steps between checkpoints")
    keep_checkpoints: int = option(2, "checkpoints kept on disk (the newest)")
    log_every: int = option(10, "steps between progress updates and logged metrics")
    autocast: bool = option(True, "bfloat16 autocast on CUDA")
    wandb_project: str | None = option(None, "log to this Weights & Biases project", flags=("--wandb",),
                                       nargs="?", const="vit-sae", metavar="PROJECT")
    # Which of the data's hooks the SAE reads (None: the data's only hook), and the hook a transcoder predicts.
    # The command line sets them from --hook / --hook-out.
    hook_name: str | None = None
    hook_name_out: str | None = None

    def __post_init__(self) -> None:
        if self.architecture == "transcoder":
            # `--arch transcoder`: a TopK transcoder (the kind ViT-Prisma publishes); it needs the hook it predicts.
            if self.hook_name_out is None:
                raise ConfigError(
                    "architecture 'transcoder' predicts another hook: pass --hook-out (hook_name_out), e.g. "
                    "--hook blocks.5.ln2.hook_normalized --hook-out blocks.5.hook_mlp_out."
                )
            self.architecture = "topk"
        self.architecture = ARCHITECTURE_ALIASES.get(self.architecture, self.architecture)
        own = architecture_class(self.architecture)
        if not own.trainable:
            raise ConfigError(
                f"architecture {self.architecture!r} is not trainable; trainable: "
                f"{[name for name in architecture_names() if architecture_class(name).trainable]}."
            )
        if own.uses_k:
            positive_int("k", self.k, "Pass e.g. k=32.")
        else:
            # k belongs to k-sparse architectures only; the CLI passes its default along for every architecture.
            self.k = None
        if isinstance(self.prefixes, list):
            self.prefixes = tuple(self.prefixes)
        if self.architecture == "matryoshka":
            if self.prefixes is None:
                raise ConfigError(
                    "architecture 'matryoshka' needs prefixes, e.g. prefixes=(128, 512, 2048) (--prefixes 128,512,2048)."
                )
            for value in self.prefixes:
                positive_int("prefixes", value)
            if any(b <= a for a, b in itertools.pairwise(self.prefixes)):
                raise ConfigError(f"prefixes {list(self.prefixes)} must be strictly increasing, e.g. 128,512,2048.")
        else:
            # Like k, the CLI passes prefixes along for every architecture; only matryoshka reads them.
            self.prefixes = None
        if self.hook_name_out is not None:
            if self.hook_name_out == self.hook_name:
                raise ConfigError(
                    f"a transcoder reads one hook and predicts another, but both are {self.hook_name!r}; pass another --hook-out."
                )
            if self.normalize_activations != "none":
                raise ConfigError(
                    f"transcoders train on raw activations; normalize_activations={self.normalize_activations!r} is not "
                    "supported for them (drop --normalize)."
                )
        elif self.skip_connection:
            raise ConfigError("skip_connection is for transcoders; name the hook they predict (hook_name_out / --hook-out).")
        if self.normalize_activations not in TRAINABLE_NORMALIZATIONS:
            raise ConfigError(
                f"normalize_activations={self.normalize_activations!r} is not supported for training; use one of "
                f"{TRAINABLE_NORMALIZATIONS} ('scaling_factor' rescales inputs to an average norm of sqrt(d_in))."
            )
        if self.b_dec_init not in B_DEC_INITS:
            raise ConfigError(f"b_dec_init={self.b_dec_init!r} is not one of {B_DEC_INITS}.")
        for name in ("expansion_factor", "init_tokens", "batch_size", "tokens_budget", "dead_tokens",
                     "checkpoint_every", "keep_checkpoints", "log_every"):
            positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "sparsity_warmup_steps", "seed"):
            non_negative_int(name, getattr(self, name))
        for name in ("d_sae", "k_aux", "data_shards"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if self.lr is not None:
            finite_number("lr", self.lr, minimum=0, strictly=True)
        if not 0 <= finite_number("decay_fraction", self.decay_fraction) <= 1:
            raise ConfigError(f"decay_fraction must lie in [0, 1], got {self.decay_fraction!r}.")
        for name in ("grad_clip", "aux_coefficient", "l1_coefficient", "l0_coefficient"):
            finite_number(name, getattr(self, name), minimum=0)
        for name in ("jumprelu_bandwidth", "jumprelu_init_threshold", "batchtopk_threshold_lr"):
            finite_number(name, getattr(self, name), minimum=0, strictly=True)
        if len(self.adam_betas) != 2:
            raise ConfigError(f"adam_betas must be two numbers (beta1, beta2), got {self.adam_betas!r}.")
        self.adam_betas = tuple(finite_number("adam_betas", beta, minimum=0) for beta in self.adam_betas)
        if self.tokens_budget < self.batch_size:
            raise ConfigError(
                f"tokens_budget={self.tokens_budget} is smaller than one batch ({self.batch_size} tokens); "
                "raise the budget or lower batch_size."
            )

    @property
    def sparsity_coefficient(self) -> float:
        """The architecture's sparsity penalty (``l1_coefficient``, ``l0_coefficient``, or 0 for TopK).

        Example:
            >>> TrainConfig(architecture="standard", l1_coefficient=5.0).sparsity_coefficient
            5.0
        """
        field_name = architecture_class(self.architecture).sparsity_coefficient_field
        return 0.0 if field_name is None else float(getattr(self, field_name))

    @property
    def total_steps(self) -> int:
        """Optimiser steps the budget allows, e.g. ``2_000_000 // 4096 == 488``."""
        return self.tokens_budget // self.batch_size

    def sae_width(self, d_in: int) -> int:
        """The number of latents for inputs of width ``d_in``: ``d_sae`` if set, else ``expansion_factor * d_in``.

        Example:
            >>> TrainConfig(expansion_factor=16).sae_width(768)
            12288
        """
        return self.d_sae if self.d_sae is not None else self.expansion_factor * d_in

    def learning_rate(self, d_sae: int) -> float:
        """The peak learning rate: ``lr`` if set, else the architecture's default for ``d_sae`` latents.

        Example:
            >>> TrainConfig(architecture="topk").learning_rate(2**14)
            0.0002
        """
        if self.lr is not None:
            return self.lr
        return architecture_class(self.architecture).default_learning_rate(d_sae)

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values.

        Example:
            >>> TrainConfig().to_dict()["architecture"]
            'topk'
        """
        values = asdict(self)
        values["adam_betas"] = list(self.adam_betas)
        values["prefixes"] = None if self.prefixes is None else list(self.prefixes)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: object = None) -> TrainConfig:
        """A config from :meth:`to_dict` output; unknown keys are an error so typos do not pass silently.

        Example:
            >>> TrainConfig.from_dict({"architecture": "standard"}).architecture
            'standard'
        """
        return config_from_dict(cls, values, source=source)
