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

    def training_terms(self, target: Float[Tensor, "n d_in"], batch: TrainingBatch) -> TrainingTerms:
        """Sparse encode and decode, plus AuxK on the dead latents the trainer names."""
        sae_in = self.encoder_input(target)
        values, indices = self.sparse_code(sae_in)
        reconstruction = kernels.decode_topk(values, indices, self.W_dec, self.b_dec)
        active = values > 0
        aux_loss = torch.zeros((), device=sae_in.device)
        if batch.dead_latents.numel():
            residual = (target - reconstruction.float()).detach()
            aux_loss = self._aux_loss(sae_in, residual, batch)
        return TrainingTerms(
            reconstruction=reconstruction,
            sparsity_loss=torch.zeros((), device=sae_in.device),
            aux_loss=aux_loss,
            fired=fired_latents(indices, active, self.cfg.d_sae),
            n_active=active.sum().float(),
        )

    def _aux_loss(self, sae_in: Tensor, residual: Tensor, batch: TrainingBatch) -> Tensor:
        # k_aux (d_in / 2 by default) is a large share of the dead set, so within it the code is dense and
        # plain GEMMs over the dead columns beat sparse gathers (measured 0.3-0.8 s against 3-14 s per step
        # at N 1024, d_in 768, k_aux 384).
        dead = batch.dead_latents
        wanted = batch.settings.k_aux or self.cfg.d_in // 2
        k_aux = min(wanted, dead.numel())
        pre = sae_in @ self.W_enc[:, dead] + self.b_enc[dead]
        values, positions = pre.topk(k_aux, dim=-1, sorted=False)
        acts = torch.zeros_like(pre).scatter(-1, positions, F.relu(values))
        estimate = acts @ self.W_dec[dead]
        scale = min(dead.numel() / wanted, 1.0)
        return scale * (estimate.float() - residual).pow(2).sum(-1).mean() / batch.variance

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
        if any(name not in tensors for name in ("W_dec", "W_enc", "b_enc")):
            return tensors
        # SAELens ranks pre-activations scaled by each latent's decoder norm and divides them out before
        # decoding; scaling the encoder and unit-normalising the decoder computes the same with plain weights.
        tensors = dict(tensors)
        norms = tensors["W_dec"].norm(dim=-1)
        tensors["W_enc"] = tensors["W_enc"] * norms
        tensors["b_enc"] = tensors["b_enc"] * norms
        tensors["W_dec"] = tensors["W_dec"] / norms[:, None]
        return tensors
