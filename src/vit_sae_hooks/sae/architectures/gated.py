"""The gated SAE (Rajamanoharan et al. 2024): one encoder matrix decides *which* latents fire (the gate) and,
rescaled per latent, *how much* (the magnitude)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from vit_sae_hooks.sae.architectures.jumprelu import jump_relu
from vit_sae_hooks.sae.config import SAEConfig
from vit_sae_hooks.sae.formats._io import rename_magnitude_bias
from vit_sae_hooks.sae.registry import register
from vit_sae_hooks.sae.sae import SAE, TrainingBatch, TrainingTerms


@register
class GatedSAE(SAE):
    """``acts = 1[x_in @ W_enc + b_gate > 0] · relu(x_in @ W_enc · exp(r_mag) + b_enc)``.

    ``b_enc`` is the magnitude bias (SAELens's and Prisma's ``b_mag``); ``b_gate [d_sae]`` and ``r_mag [d_sae]``
    are the gate bias and the per-latent log scale of the magnitude path. Since ``exp(r_mag) > 0`` the gate
    opens exactly where the magnitude pre-activation exceeds ``b_enc - exp(r_mag) · b_gate``, so this is a
    JumpReLU with that (possibly negative) threshold; ``hook_sae_acts_pre`` sees the magnitude pre-activation.

    Training (SAELens's loss) adds ``l1_coefficient · Σ relu(gate pre) · ‖W_dec row‖`` and, with weight 1, the
    reconstruction of the input by the gate path alone, ``‖relu(gate pre) @ W_dec + b_dec - x‖²``.

    Example:
        >>> sae = SAE(SAEConfig(d_in=64, d_sae=256, architecture="gated"))  # a GatedSAE
    """

    architecture = "gated"
    saelens_architecture = "gated"
    sparsity_coefficient_field = "l1_coefficient"

    b_gate: Float[Tensor, " d_sae"]
    r_mag: Float[Tensor, " d_sae"]

    @classmethod
    def extra_parameter_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """``b_gate [d_sae]`` and ``r_mag [d_sae]``."""
        return {"b_gate": (cfg.d_sae,), "r_mag": (cfg.d_sae,)}

    @property
    def threshold(self) -> Float[Tensor, " d_sae"]:
        """The magnitude pre-activation above which each latent's gate is open: ``b_enc - exp(r_mag) · b_gate``."""
        return self.b_enc - self.r_mag.exp() * self.b_gate

    def pre_activations(self, sae_in: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """The magnitude path: ``sae_in @ (W_enc · exp(r_mag)) + b_enc``."""
        return sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_enc

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        """``relu(pre) · (pre > threshold)``: the gate, expressed on the magnitude pre-activation."""
        return jump_relu(pre, self.threshold)

    def training_terms(
        self, inputs: Float[Tensor, "n d_in"], target: Float[Tensor, "n d_out"], batch: TrainingBatch
    ) -> TrainingTerms:
        """The gated reconstruction, the decoder-norm-weighted L1 of the gate path, and its reconstruction."""
        sae_in = self.encoder_input(inputs)
        gate_pre = sae_in @ self.W_enc + self.b_gate
        magnitude = F.relu(sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_enc)
        acts = (gate_pre > 0).to(magnitude.dtype) * magnitude
        gate = F.relu(gate_pre)
        sigma = batch.variance**0.5
        gate_reconstruction = gate @ self.W_dec + self.b_dec
        active = acts > 0
        return TrainingTerms(
            reconstruction=acts @ self.W_dec + self.b_dec,
            sparsity_loss=(gate * self.W_dec.norm(dim=1)).sum(-1).mean() / sigma,
            aux_loss=torch.zeros((), device=sae_in.device),
            fired=active.any(0),
            n_active=active.sum().float(),
            extra_loss=(gate_reconstruction.float() - target).pow(2).sum(-1).mean() / batch.variance,
        )

    def prepare_for_training(self, settings: Any) -> None:
        """``r_mag = 0`` and ``b_gate = b_enc = 0``: gate and magnitude start as the same ReLU."""
        with torch.no_grad():
            self.r_mag.zero_()
            self.b_gate.zero_()

    @classmethod
    def _fold_encoder_offset(cls, state: dict[str, Tensor], offset: Float[Tensor, " d_sae"]) -> None:
        """The gate and the (rescaled) magnitude path both read the shifted input."""
        state["b_gate"] = state["b_gate"] - offset
        state["b_enc"] = state["b_enc"] - state["r_mag"].exp() * offset

    @classmethod
    def fold_saelens_weights(cls, values: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
        """SAELens's ``b_mag`` is this class's ``b_enc``."""
        return rename_magnitude_bias(tensors, path)

    @classmethod
    def saelens_weights(cls, cfg: SAEConfig, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """``b_enc`` written as SAELens's ``b_mag``."""
        tensors = dict(tensors)
        tensors["b_mag"] = tensors.pop("b_enc")
        return tensors
