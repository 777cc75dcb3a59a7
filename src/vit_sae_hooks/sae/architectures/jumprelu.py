"""The JumpReLU SAE (Rajamanoharan et al. 2024): ``acts = relu(pre) · (pre > threshold)``, a learned
threshold per latent, trained with an L0 penalty through straight-through estimators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from vit_sae_hooks.sae.config import SAEConfig
from vit_sae_hooks.sae.registry import register
from vit_sae_hooks.sae.sae import SAE, TrainingBatch, TrainingTerms


def jump_relu(pre: Float[Tensor, "*batch d_sae"], threshold: Float[Tensor, " d_sae"]) -> Float[Tensor, "*batch d_sae"]:
    """``relu(pre) · (pre > threshold)``: JumpReLU's activation, and the inference activation of BatchTopK,
    Matryoshka and gated SAEs (a threshold at or below zero acts as ReLU).

    Example:
        >>> jump_relu(torch.tensor([-1.0, 0.5, 2.0]), torch.tensor([0.0, 1.0, 1.0]))
        tensor([0., 0., 2.])
    """
    return F.relu(pre) * (pre > threshold)


def _threshold_gradient(pre: Tensor, threshold: Tensor, grad_out: Tensor, bandwidth: float, scale: Tensor | float) -> Tensor:
    # The rectangle kernel of width `bandwidth` around the threshold (the paper's straight-through estimator).
    near = ((pre - threshold).abs() < bandwidth / 2).to(grad_out.dtype)
    return (-(scale / bandwidth) * near * grad_out).reshape(-1, threshold.shape[-1]).sum(0)


class _JumpReLU(torch.autograd.Function):
    """``relu(pre) · (pre > threshold)``; the threshold gets the straight-through kernel gradient."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return F.relu(pre) * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        passed = (pre > threshold) & (pre > 0)
        return grad_out * passed, _threshold_gradient(pre, threshold, grad_out, ctx.bandwidth, threshold), None


class _Step(torch.autograd.Function):
    """``pre > threshold`` as floats (the L0 penalty), with the same straight-through threshold gradient."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[None, Tensor, None]:  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        return None, _threshold_gradient(pre, threshold, grad_out, ctx.bandwidth, 1.0), None


@register
class JumpReLUSAE(SAE):
    """``acts = relu(pre) · (pre > threshold)`` with a learned ``threshold [d_sae]``.

    With a positive threshold this is ``pre · (pre > threshold)``; a non-positive threshold acts as ReLU
    (SAELens computes the same). Training keeps thresholds positive and pays ``l0_coefficient · L0``.

    Example:
        >>> sae = SAE(SAEConfig(d_in=64, d_sae=256, architecture="jumprelu"))  # a JumpReLUSAE
    """

    architecture = "jumprelu"
    saelens_architecture = "jumprelu"
    sparsity_coefficient_field = "l0_coefficient"

    threshold: Float[Tensor, " d_sae"]

    @classmethod
    def extra_parameter_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """``threshold [d_sae]``."""
        return {"threshold": (cfg.d_sae,)}

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        """``relu(pre) · (pre > threshold)``."""
        return jump_relu(pre, self.threshold)

    def training_terms(
        self, inputs: Float[Tensor, "n d_in"], target: Float[Tensor, "n d_out"], batch: TrainingBatch
    ) -> TrainingTerms:
        """Reconstruction through the straight-through JumpReLU and the L0 of the step function."""
        pre = self.pre_activations(self.encoder_input(inputs))
        bandwidth = batch.settings.jumprelu_bandwidth
        acts = _JumpReLU.apply(pre, self.threshold, bandwidth)
        active = acts > 0
        return TrainingTerms(
            reconstruction=acts @ self.W_dec + self.b_dec,
            sparsity_loss=_Step.apply(pre, self.threshold, bandwidth).float().sum(-1).mean(),
            aux_loss=torch.zeros((), device=pre.device),
            fired=active.any(0),
            n_active=active.sum().float(),
        )

    def prepare_for_training(self, settings: Any) -> None:
        """Start every threshold at ``settings.jumprelu_init_threshold``."""
        with torch.no_grad():
            self.threshold.fill_(settings.jumprelu_init_threshold)

    def after_optimizer_step(self) -> None:
        """Keep thresholds positive: a threshold below zero acts as ReLU and would receive no gradient."""
        with torch.no_grad():
            self.threshold.clamp_(min=1e-6)

    @classmethod
    def fold_saelens_weights(cls, values: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
        """Older SAELens stored ``log_threshold``; this class keeps the threshold itself."""
        if "log_threshold" not in tensors:
            return tensors
        tensors = dict(tensors)
        tensors["threshold"] = tensors.pop("log_threshold").exp()
        return tensors
