"""The ReLU SAE (``architecture="standard"``): ``acts = relu(x_in @ W_enc + b_enc)``, trained with an L1 penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from vit_sae_hooks.sae.registry import register
from vit_sae_hooks.sae.sae import SAE, TrainingBatch, TrainingTerms


@register
class ReLUSAE(SAE):
    """The standard SAE: a ReLU of the affine encoder.

    Training pays ``l1_coefficient · ‖acts‖₁ / σ`` (σ the data's standard deviation per token): decoder rows
    are unit-norm, so this is the decoder-norm-weighted L1, and dividing by σ makes the coefficient
    independent of the activations' units.

    Example:
        >>> sae = SAE(SAEConfig(d_in=64, d_sae=256))  # a ReLUSAE
    """

    architecture = "standard"
    saelens_architecture = "standard"
    sparsity_coefficient_field = "l1_coefficient"

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        """``relu(pre)``."""
        return F.relu(pre)

    def training_terms(
        self, inputs: Float[Tensor, "n d_in"], target: Float[Tensor, "n d_out"], batch: TrainingBatch
    ) -> TrainingTerms:
        """Reconstruction from ``relu(pre)`` and the scaled L1 of the activations."""
        acts = self.activation(self.pre_activations(self.encoder_input(inputs)))
        active = acts > 0
        return TrainingTerms(
            reconstruction=acts @ self.W_dec + self.b_dec,
            sparsity_loss=acts.float().sum(-1).mean() / batch.variance**0.5,
            aux_loss=torch.zeros((), device=acts.device),
            fired=active.any(0),
            n_active=active.sum().float(),
        )
