"""The training loss: the SAE's own training terms (each architecture supplies them) turned into one loss.

All losses are means over tokens of per-token terms divided by a constant (the data's variance per token,
measured once at initialisation), so the mean over equal-sized per-process batches, which DDP computes,
equals the loss of the whole batch.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from vit_sae_hooks.sae import SAE, TrainingBatch
from vit_sae_hooks.training.config import TrainConfig

# Order of the per-step statistics that are summed over processes after each step.
STAT_NAMES = ("tokens", "loss", "aux_loss", "sparsity_loss", "squared_error", "squared_norm", "active_latents")


class TrainingObjective(nn.Module):
    """The loss of an SAE on a batch, with per-step statistics; the module DDP wraps.

    ``forward(x, dead, sparsity_coefficient, target=None)`` returns ``(loss, stats, fired)``: ``dead`` names
    the dead latents (indices, or a ``[d_sae]`` boolean mask); ``target`` is what a transcoder predicts (an
    SAE reconstructs its normalised input); ``stats`` are sums over the batch in :data:`STAT_NAMES` order
    followed by the sum of the targets; ``fired`` marks the latents active on some token.

    Example:
        >>> loss, stats, fired = TrainingObjective(sae, TrainConfig(), variance=1.0)(x, dead_latents, 1.0)
    """

    def __init__(self, sae: SAE, config: TrainConfig, variance: float) -> None:
        super().__init__()
        self.sae = sae
        self.config = config
        self.variance = variance

    def forward(
        self, x: Float[Tensor, "batch d_in"], dead: Int[Tensor, " n_dead"] | Bool[Tensor, " d_sae"],
        sparsity_coefficient: float, target: Float[Tensor, "batch d_out"] | None = None,
    ) -> tuple[Float[Tensor, ""], Float[Tensor, " n_stats_plus_d_out"], Bool[Tensor, " d_sae"]]:
        dead_latents = dead.nonzero().flatten() if dead.dtype == torch.bool else dead
        inputs, _ = self.sae.normalised_input(x)
        target = inputs if target is None else target.to(inputs.dtype)
        terms = self.sae.training_terms(inputs, target, TrainingBatch(dead_latents, self.variance, self.config))
        error = target - terms.reconstruction.float()
        reconstruction = error.pow(2).sum(-1).mean() / self.variance
        loss = (
            reconstruction + self.config.aux_coefficient * terms.aux_loss + sparsity_coefficient * terms.sparsity_loss
            + terms.extra_loss
        )
        n_tokens = x.shape[0]
        detached = target.detach().float()
        scalars = torch.stack([
            torch.full((), float(n_tokens), device=x.device), loss.detach() * n_tokens,
            terms.aux_loss.detach() * n_tokens, terms.sparsity_loss.detach() * n_tokens,
            error.detach().pow(2).sum(), detached.pow(2).sum(), terms.n_active.detach(),
        ])
        stats = torch.cat([scalars, detached.sum(0)])
        return loss, stats, terms.fired


def summarise(stats: Float[Tensor, " n_stats_plus_d_in"], dead_fraction: float) -> dict[str, float]:
    """Readable metrics from summed statistics: loss, explained variance, L0, dead fraction.

    Example:
        >>> summarise(stats, dead_fraction=0.01)["explained_variance"]
        0.93
    """
    values = dict(zip(STAT_NAMES, stats[: len(STAT_NAMES)].tolist(), strict=True))
    sum_x = stats[len(STAT_NAMES) :].double()
    tokens = values["tokens"]
    centred = values["squared_norm"] - float(sum_x.pow(2).sum()) / tokens
    return {
        "loss": values["loss"] / tokens,
        "explained_variance": 1.0 - values["squared_error"] / max(centred, 1e-12),
        "l0": values["active_latents"] / tokens,
        "dead_fraction": dead_fraction,
        "aux_loss": values["aux_loss"] / tokens,
        "sparsity_loss": values["sparsity_loss"] / tokens,
    }
