"""The Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): nested prefixes of the dictionary each
reconstruct the input, so the first latents learn the coarse features and later ones refine them."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor

from vit_sae_hooks import kernels
from vit_sae_hooks.checks import is_int
from vit_sae_hooks.errors import CheckpointFormatError, ConfigError
from vit_sae_hooks.sae.architectures.batchtopk import BatchTopKSAE
from vit_sae_hooks.sae.config import SAEConfig
from vit_sae_hooks.sae.registry import register
from vit_sae_hooks.sae.sae import SAE, TrainingBatch


def check_prefixes(prefixes: Any, d_sae: int) -> tuple[int, ...]:
    """``prefixes`` as a tuple when they are strictly increasing positive ints ending at ``d_sae``.

    Example:
        >>> check_prefixes([128, 512, 2048], 2048)
        (128, 512, 2048)
    """
    fix = f"e.g. prefixes=[{max(1, d_sae // 16)}, {max(1, d_sae // 4)}, {d_sae}] (cumulative sizes, the last one d_sae)"
    if not isinstance(prefixes, (list, tuple)) or not prefixes or not all(is_int(p) for p in prefixes):
        raise ConfigError(f"a matryoshka SAE needs prefixes, a list of positive ints; got {prefixes!r}. Use {fix}.")
    if any(p < 1 for p in prefixes) or any(b <= a for a, b in itertools.pairwise(prefixes)):
        raise ConfigError(f"prefixes {list(prefixes)} must be positive and strictly increasing; use {fix}.")
    if prefixes[-1] > d_sae:
        raise ConfigError(f"prefixes {list(prefixes)} exceed d_sae={d_sae}: a prefix is a number of latents; use {fix}.")
    if prefixes[-1] != d_sae:
        raise ConfigError(
            f"prefixes {list(prefixes)} must end with d_sae={d_sae} (the whole dictionary is the last prefix); "
            f"use {[*prefixes, d_sae]}."
        )
    return tuple(prefixes)


@register
class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK whose latents ``[0, p)`` for every ``p`` in ``cfg.prefixes`` (cumulative sizes ending at
    ``d_sae``) each reconstruct the input on their own.

    The training loss sums the reconstruction errors of every prefix (SAELens's convention: the full width
    once, plus each inner prefix), in units of the data's variance, with AuxK on the full width. Inference is
    BatchTopK's per-token threshold; :meth:`prefix_sae` gives the SAE of the first ``p`` latents.

    Example:
        >>> sae = SAE(SAEConfig(d_in=64, d_sae=256, architecture="matryoshka", k=16, prefixes=(32, 96, 256)))
    """

    architecture = "matryoshka"
    saelens_training_architecture = "matryoshka_batchtopk"

    @classmethod
    def check_config(cls, cfg: SAEConfig) -> None:
        """BatchTopK's ``k``, plus ``prefixes`` (see :func:`check_prefixes`)."""
        super().check_config(cfg)
        check_prefixes(cfg.prefixes, cfg.d_sae)

    def extra_training_loss(self, values: Tensor, indices: Tensor, target: Tensor, batch: TrainingBatch) -> Tensor:
        """``Σ_{p < d_sae} ‖target - decode(code restricted to latents < p)‖² / variance`` (mean over tokens)."""
        total = values.new_zeros((), dtype=target.dtype)
        for width in self.cfg.prefixes[:-1]:
            inner = kernels.decode_topk(values * (indices < width), indices, self.W_dec, self.b_dec)
            total = total + (target - inner.float()).pow(2).sum(-1).mean() / batch.variance
        return total

    def prefix_sae(self, width: int) -> SAE:
        """The BatchTopK SAE of latents ``[0, width)``: what the prefix of that size computes at inference.

        Example:
            >>> coarse = sae.prefix_sae(sae.cfg.prefixes[0]); coarse.d_sae
            32
        """
        if width not in self.cfg.prefixes:
            raise ConfigError(f"width {width!r} is not one of this SAE's prefixes {list(self.cfg.prefixes)}.")
        config = replace(self.cfg, architecture="batchtopk", d_sae=width, k=min(self.cfg.k, width), prefixes=None)
        state = self.state_dict()
        state.update(W_enc=state["W_enc"][:, :width], b_enc=state["b_enc"][:width], W_dec=state["W_dec"][:width],
                     threshold=state["threshold"][:width])
        return SAE.from_state_dict(config, {name: tensor.clone() for name, tensor in state.items()},
                                   device=self.W_enc.device)

    @classmethod
    def saelens_metadata(cls, cfg: SAEConfig) -> dict[str, Any]:
        """BatchTopK's, plus ``matryoshka_widths`` (SAELens's name for the prefixes)."""
        metadata = super().saelens_metadata(cfg)
        metadata["training_architecture_details"]["matryoshka_widths"] = list(cfg.prefixes)
        return metadata

    @classmethod
    def read_saelens_fields(cls, values: dict[str, Any], path: Path) -> dict[str, Any]:
        """``k`` and ``matryoshka_widths``, with ``d_sae`` appended when the list stops short of it (as SAELens does)."""
        details = (values.get("metadata") or {}).get("training_architecture_details") or {}
        widths = values.get("matryoshka_widths", details.get("matryoshka_widths"))
        if not isinstance(widths, list) or not widths:
            raise CheckpointFormatError(f"{path}: a matryoshka_batchtopk SAE needs 'matryoshka_widths'; found {widths!r}.")
        d_sae = values.get("d_sae")
        if is_int(d_sae) and all(is_int(w) for w in widths) and widths[-1] < d_sae:
            widths = [*widths, d_sae]
        return {**super().read_saelens_fields(values, path), "prefixes": widths}
