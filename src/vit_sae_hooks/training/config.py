"""Everything that decides how an SAE is trained, as one validated dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.sae.config import ARCHITECTURES

BDecInit = Literal["geometric_median", "mean", "zeros"]
B_DEC_INITS = ("geometric_median", "mean", "zeros")
TRAINABLE_NORMALIZATIONS = ("none", "scaling_factor")


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
    same batches whatever the number of processes.

    Example:
        >>> config = TrainConfig(architecture="topk", k=32, expansion_factor=16, tokens_budget=2_000_000)
    """

    architecture: str = "topk"
    k: int | None = 32
    expansion_factor: int = 16
    d_sae: int | None = None
    normalize_activations: str = "none"
    b_dec_init: BDecInit = "geometric_median"
    init_tokens: int = 16384
    batch_size: int = 4096
    tokens_budget: int = 2_000_000
    lr: float | None = None
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    grad_clip: float = 1.0
    k_aux: int | None = None
    aux_coefficient: float = 1 / 32
    dead_tokens: int = 10_000_000
    l1_coefficient: float = 5.0
    l0_coefficient: float = 0.01
    sparsity_warmup_steps: int = 1000
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.001
    seed: int = 0
    data_shards: int | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    autocast: bool = True
    wandb_project: str | None = None

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture {self.architecture!r} is not trainable; use one of {ARCHITECTURES}.")
        if self.architecture != "topk":
            # k belongs to TopK only; the CLI passes its default along for every architecture.
            self.k = None
        elif isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"a topk SAE needs a positive integer k, got k={self.k!r}; pass e.g. k=32.")
        if self.normalize_activations not in TRAINABLE_NORMALIZATIONS:
            raise ConfigError(
                f"normalize_activations={self.normalize_activations!r} is not supported for training; use one of "
                f"{TRAINABLE_NORMALIZATIONS} ('scaling_factor' rescales inputs to an average norm of sqrt(d_in))."
            )
        if self.b_dec_init not in B_DEC_INITS:
            raise ConfigError(f"b_dec_init={self.b_dec_init!r} is not one of {B_DEC_INITS}.")
        positive = ["expansion_factor", "init_tokens", "batch_size", "tokens_budget", "dead_tokens",
                    "checkpoint_every", "keep_checkpoints", "log_every"]
        for name in positive:
            _require_positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "sparsity_warmup_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}.")
        for name in ("d_sae", "k_aux", "data_shards"):
            if getattr(self, name) is not None:
                _require_positive_int(name, getattr(self, name))
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive finite number or None (architecture default), got {self.lr!r}.")
        if not 0 <= self.decay_fraction <= 1:
            raise ConfigError(f"decay_fraction must lie in [0, 1], got {self.decay_fraction!r}.")
        for name in ("grad_clip", "aux_coefficient", "l1_coefficient", "l0_coefficient"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite non-negative number, got {value!r}.")
        for name in ("jumprelu_bandwidth", "jumprelu_init_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}.")
        self.adam_betas = tuple(float(beta) for beta in self.adam_betas)
        if self.tokens_budget < self.batch_size:
            raise ConfigError(
                f"tokens_budget={self.tokens_budget} is smaller than one batch ({self.batch_size} tokens); "
                "raise the budget or lower batch_size."
            )

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
        return 2e-4 / math.sqrt(d_sae / 2**14) if self.architecture == "topk" else 4e-4

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values.

        Example:
            >>> TrainConfig().to_dict()["architecture"]
            'topk'
        """
        values = asdict(self)
        values["adam_betas"] = list(self.adam_betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from :meth:`to_dict` output; unknown keys are an error so typos do not pass silently.

        Example:
            >>> TrainConfig.from_dict({"architecture": "standard"}).architecture
            'standard'
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields {unknown}; valid fields are {sorted(known)}.")
        return cls(**values)


def _require_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
