"""SAE evaluation metrics as float64 running sums over a whole dataset (formulas in docs/metrics.md).

Two accumulators: :class:`ReconstructionStats` (the SAE's input and reconstruction on its token set: explained
variance, MSE, cosines, L0, feature firing) and :class:`DownstreamStats` (the model's output clean, with the
SAE spliced and with the activation zero-ablated: cross-entropies, KL, output cosine). Sums stay on the
tensors' device and are read back once at the end, so a GPU evaluation does not synchronise every batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

_EPS = 1e-8  # as torch.cosine_similarity: a zero vector has cosine 0 with anything


def _cosine(a: Float[Tensor, "n d"], b: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
    return (a * b).sum(-1) / (a.norm(dim=-1).clamp_min(_EPS) * b.norm(dim=-1).clamp_min(_EPS))


class _RunningSums:
    """Named running sums that stay on the tensors' device until :meth:`compute` reads them."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}

    def _add(self, name: str, value: Tensor) -> None:
        self._sums[name] = self._sums[name] + value if name in self._sums else value


class ReconstructionStats(_RunningSums):
    """Running float64 sums of an SAE's reconstruction quality and sparsity over tokens.

    Call :meth:`update` once per batch with the tokens the SAE reads (flattened to rows), its
    reconstruction and which latents fired; read the metrics with :meth:`compute`.

    Example:
        >>> stats = ReconstructionStats(d_sae=256); stats.update(x, x_hat, fired, is_cls, image_index)
        >>> stats.compute()["explained_variance_pct"]
    """

    def __init__(self, d_sae: int, active_image_threshold: int = 10):
        super().__init__()
        self.d_sae = d_sae
        self.active_image_threshold = active_image_threshold
        self.n_tokens = 0
        self.n_cls_tokens = 0
        self.n_images = 0
        # Dataset mean and centred sum of squares, merged batch by batch (Chan et al.) so the
        # variance does not suffer the cancellation of sum(x^2) - n*mean^2.
        self._mean: Tensor | None = None
        self._centred_ss: Tensor | None = None

    def update(
        self,
        x: Float[Tensor, "n d_in"],
        x_hat: Float[Tensor, "n d_in"],
        fired: Bool[Tensor, "n d_sae"] | tuple[Int[Tensor, "n k"], Bool[Tensor, "n k"]],
        is_cls: Bool[Tensor, " n"],
        image_index: Int[Tensor, " n"],
        n_images: int,
    ) -> None:
        """Add one batch: ``n`` token rows from ``n_images`` images (``image_index`` says which, 0-based).

        ``fired`` is a dense boolean mask of active latents, or for TopK codes the pair
        ``(indices [n, k], active [n, k])``.
        """
        x, x_hat = x.double(), x_hat.double()
        n = x.shape[0]
        error = (x - x_hat).pow(2).sum(-1)
        self._add("squared_error", error.sum())
        # Prisma's training-time estimator: per token, centred on this batch's mean.
        batch_variance = (x - x.mean(0)).pow(2).sum(-1)
        self._add("per_batch_ev", (1 - error / batch_variance.clamp_min(_EPS)).sum())
        # CLIP-Scope's: per token, centred on the token's own mean over features.
        token_variance = (x - x.mean(-1, keepdim=True)).pow(2).sum(-1)
        self._add("clipscope_ev", (1 - error / token_variance.clamp_min(_EPS)).sum())
        self._add("token_cos", _cosine(x, x_hat).sum())
        self._add("column_dot", (x * x_hat).sum(0))
        self._add("column_x_sq", x.pow(2).sum(0))
        self._add("column_x_hat_sq", x_hat.pow(2).sum(0))
        self._merge_moments(x)

        fire_count, l0, image_fire_count = self._firing(fired, is_cls, image_index, n_images)
        l0 = l0.double()
        self._add("l0", l0.sum())
        self._add("cls_l0", (l0 * is_cls).sum())
        self._add("patch_l0", (l0 * ~is_cls).sum())
        self._add("fire_count", fire_count)
        self._add("image_fire_count", image_fire_count)
        self.n_tokens += n
        self.n_cls_tokens += int(is_cls.sum())
        self.n_images += n_images

    def _firing(self, fired, is_cls: Tensor, image_index: Tensor, n_images: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per latent: tokens it fired on; per token: L0; per latent: images it fired for."""
        # CLIP-Scope counts the images a latent fires for on the CLS token; without a CLS token, on any token.
        rows = is_cls if bool(is_cls.any()) else torch.ones_like(is_cls)
        if isinstance(fired, tuple):
            # TopK codes stay sparse: a dense [tokens, d_sae] mask would be gigabytes for CLIP-Scope's SAEs.
            indices, active = fired
            fire_count = torch.bincount(indices[active], minlength=self.d_sae)
            keys = (image_index[:, None] * self.d_sae + indices)[active & rows[:, None]]
            image_fire_count = torch.bincount(keys.unique() % self.d_sae, minlength=self.d_sae)
            return fire_count, active.sum(-1), image_fire_count
        fire_count = fired.sum(0, dtype=torch.int64)
        per_image = torch.zeros(n_images, self.d_sae, dtype=torch.int32, device=fired.device)
        per_image.index_add_(0, image_index[rows], fired[rows].int())
        return fire_count, fired.sum(-1), (per_image > 0).sum(0, dtype=torch.int64)

    def _merge_moments(self, x: Float[Tensor, "n d"]) -> None:
        n_new = x.shape[0]
        mean_new = x.mean(0)
        centred_new = (x - mean_new).pow(2).sum(0)
        if self._mean is None:
            self._mean, self._centred_ss = mean_new, centred_new
            return
        n_old = self.n_tokens
        total = n_old + n_new
        delta = mean_new - self._mean
        self._centred_ss = self._centred_ss + centred_new + delta.pow(2) * (n_old * n_new / total)
        self._mean = self._mean + delta * (n_new / total)

    def compute(self) -> dict[str, float | None]:
        """The metrics over everything added so far (None where a token kind never occurred)."""
        if self.n_tokens == 0:
            raise ValueError("no tokens were added; call update() with at least one batch")
        s = {name: value.cpu() for name, value in self._sums.items()}
        n = self.n_tokens
        n_patches = n - self.n_cls_tokens
        total_variance = float(self._centred_ss.sum())
        column_cos = s["column_dot"] / (s["column_x_sq"].sqrt().clamp_min(_EPS) * s["column_x_hat_sq"].sqrt().clamp_min(_EPS))
        alive = s["fire_count"] > 0
        active = s["image_fire_count"] >= self.active_image_threshold
        return {
            "explained_variance_pct": 100 * (1 - float(s["squared_error"]) / total_variance) if total_variance > 0 else math.nan,
            "explained_variance_per_batch_pct": 100 * float(s["per_batch_ev"]) / n,
            "explained_variance": float(s["clipscope_ev"]) / n,
            "mse": float(s["squared_error"]) / n,
            "cos_sim": float(s["token_cos"]) / n,
            "cos_sim_columns": float(column_cos.mean()),
            "avg_l0": float(s["l0"]) / n,
            "avg_cls_l0": float(s["cls_l0"]) / self.n_cls_tokens if self.n_cls_tokens else None,
            "avg_patch_l0": float(s["patch_l0"]) / n_patches if n_patches else None,
            "alive_features_pct": 100 * float(alive.double().mean()),
            "dead_feature_proportion": 1 - float(alive.double().mean()),
            "active_feature_proportion": float(active.double().mean()),
        }


class DownstreamStats(_RunningSums):
    """Running float64 sums of what splicing or ablating does to the model's output and class predictions.

    Example:
        >>> stats = DownstreamStats(); stats.update(out, out_recon, out_zero, logits, logits_recon, logits_zero, labels)
        >>> stats.compute()["ce_recovered_pct"]
    """

    def __init__(self):
        super().__init__()
        self.n_images = 0
        self.n_labelled = 0
        self.n_with_logits = 0

    def update(
        self,
        output: Float[Tensor, "batch d_out"],
        output_recon: Float[Tensor, "batch d_out"],
        logits: Float[Tensor, "batch n_classes"] | None = None,
        logits_recon: Float[Tensor, "batch n_classes"] | None = None,
        logits_zero: Float[Tensor, "batch n_classes"] | None = None,
        labels: Int[Tensor, " batch"] | None = None,
    ) -> None:
        """Add one batch; ``labels`` of ``-1`` (unlabelled) are left out of the cross-entropies."""
        self._add("recon_cos", _cosine(output.double(), output_recon.double()).sum())
        self.n_images += output.shape[0]
        if logits is None:
            return
        log_p = F.log_softmax(logits.double(), -1)
        log_p_recon = F.log_softmax(logits_recon.double(), -1)
        log_p_zero = F.log_softmax(logits_zero.double(), -1)
        self._add("kl", (log_p.exp() * (log_p - log_p_recon)).sum())
        self._add("kl_zero", (log_p.exp() * (log_p - log_p_zero)).sum())
        self.n_with_logits += output.shape[0]
        if labels is None:
            return
        labelled = labels >= 0
        picked = labels.clamp_min(0)[:, None]
        for name, log_probs in (("ce", log_p), ("recon_ce", log_p_recon), ("zero_abl_ce", log_p_zero)):
            self._add(name, -(log_probs.gather(-1, picked)[:, 0] * labelled).sum())
            self._add(f"{name}_correct", ((log_probs.argmax(-1) == labels) & labelled).sum())
        self.n_labelled += int(labelled.sum())

    def compute(self) -> dict[str, float | None]:
        """The metrics over everything added so far (None where no logits or no labels were given)."""
        s = {name: float(value) for name, value in self._sums.items()}
        result: dict[str, float | None] = {"recon_cos_sim": s["recon_cos"] / self.n_images if self.n_images else None}
        with_logits = self.n_with_logits > 0
        result["kl_div"] = s["kl"] / self.n_with_logits if with_logits else None
        result["kl_div_zero_abl"] = s["kl_zero"] / self.n_with_logits if with_logits else None
        n = self.n_labelled
        for name in ("ce", "recon_ce", "zero_abl_ce"):
            result[name] = s[name] / n if n else None
        result["accuracy"] = s["ce_correct"] / n if n else None
        result["recon_accuracy"] = s["recon_ce_correct"] / n if n else None
        result["zero_abl_accuracy"] = s["zero_abl_ce_correct"] / n if n else None
        result["ce_recovered_pct"] = ce_recovered_pct(result["ce"], result["recon_ce"], result["zero_abl_ce"])
        return result


def ce_recovered_pct(clean: float | None, recon: float | None, zero: float | None) -> float | None:
    """``100 · (zero − recon) / (zero − clean)``: 100 when splicing costs nothing, 0 when it is as bad as zeroing.

    Example:
        >>> ce_recovered_pct(6.762, 6.763, 6.908)
        99.31...
    """
    if clean is None or recon is None or zero is None or zero == clean:
        return None
    return 100 * (zero - recon) / (zero - clean)
