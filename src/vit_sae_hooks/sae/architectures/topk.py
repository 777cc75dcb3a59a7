"""The TopK SAE: keep the ``k`` largest pre-activations per token (ReLU on them unless ``topk_apply_relu`` is
False, as in clipscope), computed by the sparse kernels without a dense ``[.., d_sae]`` tensor."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vit_sae_hooks import kernels
from vit_sae_hooks.checks import is_int
from vit_sae_hooks.errors import CheckpointFormatError, ConfigError
from vit_sae_hooks.sae.config import SAEConfig
from vit_sae_hooks.sae.registry import register
from vit_sae_hooks.sae.sae import SAE, TrainingBatch, TrainingTerms


def fired_latents(indices: Int[Tensor, "n k"], active: Bool[Tensor, "n k"], d_sae: int) -> Bool[Tensor, " d_sae"]:
    """Which of ``d_sae`` latents are active somewhere in a sparse code, without a host synchronisation.

    Example:
        >>> fired_latents(torch.tensor([[0, 3]]), torch.tensor([[True, False]]), 4)
        tensor([ True, False, False, False])
    """
    counts = torch.zeros(d_sae, dtype=torch.int32, device=indices.device)
    return counts.index_add_(0, indices.flatten(), active.flatten().int()) > 0


def auxk_loss(
    sae: SAE, sae_in: Float[Tensor, "n d_in"], residual: Float[Tensor, "n d_out"], batch: TrainingBatch,
    apply_relu: bool = True,
) -> Float[Tensor, ""]:
    """AuxK (Gao et al. 2024): the ``k_aux`` dead latents with the largest pre-activations reconstruct
    ``residual`` (what the live latents missed, no ``b_dec``), in units of the data's variance.

    ``k_aux`` is ``batch.settings.k_aux`` or ``d_in / 2``; the loss is scaled by ``min(n_dead / k_aux, 1)``.
    With ``apply_relu`` the aux activations are ReLU'd (sparsify); SAELens keeps them signed. Zero when no
    latent is dead.

    Example:
        >>> loss = auxk_loss(sae, sae_in, (target - recon).detach(), batch)
    """
    dead = batch.dead_latents
    if not dead.numel():
        return torch.zeros((), device=sae_in.device)
    # k_aux (d_in / 2 by default) is a large share of the dead set, so within it the code is dense and
    # plain GEMMs over the dead columns beat sparse gathers (measured 0.3-0.8 s against 3-14 s per step
    # at N 1024, d_in 768, k_aux 384).
    wanted = (batch.settings.k_aux if batch.settings is not None else None) or sae.cfg.d_in // 2
    k_aux = min(wanted, dead.numel())
    pre = sae_in @ sae.W_enc[:, dead] + sae.b_enc[dead]
    values, positions = pre.topk(k_aux, dim=-1, sorted=False)
    acts = torch.zeros_like(pre).scatter(-1, positions, F.relu(values) if apply_relu else values)
    estimate = acts @ sae.W_dec[dead]
    scale = min(dead.numel() / wanted, 1.0)
    return scale * (estimate.float() - residual).pow(2).sum(-1).mean() / batch.variance


@register
class TopKSAE(SAE):
    """``acts = topk_k(x_in @ W_enc + b_enc)``, ReLU on the kept values unless ``cfg.topk_apply_relu`` is False.

    Training adds the AuxK loss (Gao et al. 2024): the ``k_aux`` dead latents with the largest
    pre-activations reconstruct what the live ones missed, which gives dead latents a gradient again.

    Example:
        >>> sae = SAE(SAEConfig(d_in=64, d_sae=256, architecture="topk", k=8))  # a TopKSAE
    """

    architecture = "topk"
    saelens_architecture = "topk"
    has_sparse_code = True
    uses_k = True

    @classmethod
    def check_config(cls, cfg: SAEConfig) -> None:
        """``k`` must be an integer in ``[1, d_sae]``."""
        if not is_int(cfg.k) or not 1 <= cfg.k <= cfg.d_sae:
            raise ConfigError(f"a topk SAE needs an integer k with 1 <= k <= d_sae={cfg.d_sae}, got k={cfg.k!r}.")

    @classmethod
    def default_learning_rate(cls, d_sae: int) -> float:
        """``2e-4 / sqrt(d_sae / 2**14)`` (Gao et al. 2024)."""
        return 2e-4 / math.sqrt(d_sae / 2**14)

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        """The ``k`` largest entries of ``pre`` (ReLU on them), zeros elsewhere."""
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        if self.cfg.topk_apply_relu:
            values = F.relu(values)
        return torch.zeros_like(pre).scatter(-1, indices, values)

    def sparse_code(self, sae_in: Float[Tensor, "*batch d_in"]) -> tuple[Float[Tensor, "*batch k"], Int[Tensor, "*batch k"]]:
        """The top-k ``(values, indices)`` from the fused kernels."""
        return kernels.encode_topk(sae_in, self.W_enc, self.b_enc, self.cfg.k, apply_relu=self.cfg.topk_apply_relu)

    def training_terms(
        self, inputs: Float[Tensor, "n d_in"], target: Float[Tensor, "n d_out"], batch: TrainingBatch
    ) -> TrainingTerms:
        """Sparse encode and decode, plus AuxK on the dead latents the trainer names."""
        sae_in = self.encoder_input(inputs)
        values, indices = self.sparse_code(sae_in)
        reconstruction = kernels.decode_topk(values, indices, self.W_dec, self.b_dec)
        active = values != 0
        return TrainingTerms(
            reconstruction=reconstruction,
            sparsity_loss=torch.zeros((), device=sae_in.device),
            aux_loss=auxk_loss(self, sae_in, (target - reconstruction.float()).detach(), batch),
            fired=fired_latents(indices, active, self.cfg.d_sae),
            n_active=active.sum().float(),
        )

    @classmethod
    def saelens_fields(cls, cfg: SAEConfig) -> dict[str, Any]:
        """``k``, and plain (not decoder-norm-rescaled) activations."""
        return {"k": cfg.k, "rescale_acts_by_decoder_norm": False}

    @classmethod
    def saelens_difference(cls, cfg: SAEConfig) -> str | None:
        """SAELens's TopK applies ReLU to the kept values: a TopK without ReLU (clipscope's) is not expressible."""
        if cfg.topk_apply_relu:
            return None
        return "it is a TopK SAE without ReLU (negative top-k values pass through), and SAELens's TopK applies ReLU"

    @classmethod
    def read_saelens_fields(cls, values: dict[str, Any], path: Path) -> dict[str, Any]:
        """``k`` (SAELens 6) or ``activation_fn_kwargs.k`` (before 6)."""
        k = values.get("k")
        if k is None:
            k = (values.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise CheckpointFormatError(f"{path}: a topk SAE needs 'k' (or activation_fn_kwargs.k); none found.")
        return {"k": k}

    @classmethod
    def fold_saelens_weights(cls, values: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
        """Fold ``rescale_acts_by_decoder_norm`` into plain weights."""
        if not values.get("rescale_acts_by_decoder_norm", False):
            return tensors
        return fold_decoder_norms(tensors)


def fold_decoder_norms(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Plain weights for an SAE that ranks pre-activations scaled by each latent's decoder norm and divides the
    norms out before decoding (SAELens's ``rescale_acts_by_decoder_norm``): ``W_enc·n``, ``b_enc·n``, ``W_dec/n``.

    Example:
        >>> plain = fold_decoder_norms({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec})
    """
    if any(name not in tensors for name in ("W_dec", "W_enc", "b_enc")):
        return tensors
    tensors = dict(tensors)
    norms = tensors["W_dec"].norm(dim=-1)
    tensors["W_enc"] = tensors["W_enc"] * norms
    tensors["b_enc"] = tensors["b_enc"] * norms
    tensors["W_dec"] = tensors["W_dec"] / norms[:, None]
    return tensors
