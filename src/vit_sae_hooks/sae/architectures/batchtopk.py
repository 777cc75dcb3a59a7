"""The BatchTopK SAE (Bussmann et al. 2024): training keeps the ``int(k · N)`` largest pre-activations of a
batch of ``N`` tokens, wherever they fall; inference thresholds each token on its own with the running
estimate of the smallest activation training kept, so an image's features never depend on its batch-mates."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_sae_hooks import kernels
from vit_sae_hooks.checks import finite_number
from vit_sae_hooks.errors import CheckpointFormatError, ConfigError
from vit_sae_hooks.sae.architectures.jumprelu import jump_relu
from vit_sae_hooks.sae.architectures.topk import auxk_loss, fired_latents, fold_decoder_norms
from vit_sae_hooks.sae.config import SAEConfig
from vit_sae_hooks.sae.registry import register
from vit_sae_hooks.sae.sae import SAE, TrainingBatch, TrainingTerms

# SAELens's default rate of the running threshold (its topk_threshold_lr).
DEFAULT_THRESHOLD_LR = 0.01


@register
class BatchTopKSAE(SAE):
    """BatchTopK: ``k`` active latents per token *on average over a training batch*; at inference
    ``acts = relu(pre) · (pre > threshold)`` with the learned, uniform ``threshold [d_sae]`` (a buffer).

    Training updates the threshold after every batch as ``θ ← (1 - lr)·θ + lr·min(kept activations)``
    (``batchtopk_threshold_lr``, SAELens's ``topk_threshold_lr``) and adds AuxK for dead latents.
    :meth:`encode_batch` gives the training-time selection over a whole batch. ``topk_apply_relu=False``
    (saev) ranks signed pre-activations in that selection; inference is the same either way.

    Example:
        >>> sae = SAE(SAEConfig(d_in=64, d_sae=256, architecture="batchtopk", k=16))  # a BatchTopKSAE
    """

    architecture = "batchtopk"
    # SAELens saves a BatchTopK SAE for inference as JumpReLU, naming the training architecture in metadata.
    saelens_architecture = "jumprelu"
    saelens_training_architecture = "batchtopk"
    buffer_names = ("threshold",)
    uses_k = True

    threshold: Float[Tensor, " d_sae"]

    @classmethod
    def check_config(cls, cfg: SAEConfig) -> None:
        """``k`` (active latents per token on average, a float allowed as in SAELens) in ``(0, d_sae]``."""
        if cfg.k is None:
            raise ConfigError(f"a {cfg.architecture} SAE needs k (active latents per token on average), e.g. k=32.")
        k = finite_number("k", cfg.k, minimum=0, strictly=True)
        if k > cfg.d_sae:
            raise ConfigError(f"k={cfg.k!r} is more than d_sae={cfg.d_sae}; choose 0 < k <= d_sae.")
        if cfg.prefixes is not None and cls.architecture != "matryoshka":
            raise ConfigError(f"prefixes belong to architecture 'matryoshka', not {cfg.architecture!r}.")

    @classmethod
    def extra_parameter_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """``threshold [d_sae]`` (the same value for every latent)."""
        return {"threshold": (cfg.d_sae,)}

    @classmethod
    def default_learning_rate(cls, d_sae: int) -> float:
        """``2e-4 / sqrt(d_sae / 2**14)``, as for TopK (Gao et al. 2024)."""
        return 2e-4 / math.sqrt(d_sae / 2**14)

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        """``relu(pre) · (pre > threshold)``: the per-token inference rule."""
        return jump_relu(pre, self.threshold)

    def batch_code(self, sae_in: Float[Tensor, "*batch d_in"]) -> tuple[Float[Tensor, "*batch m"], Int[Tensor, "*batch m"]]:
        """The batch-level top-k of the (normalised, centred) encoder input as a padded sparse code."""
        return kernels.encode_batch_topk(sae_in, self.W_enc, self.b_enc, self.cfg.k, apply_relu=self.cfg.topk_apply_relu)

    def encode_batch(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Feature activations chosen as in training: the ``int(k · N)`` largest over all ``N`` tokens of ``x``.

        This is what SAELens's training SAE and saev's train mode compute; :meth:`encode` is the per-token rule.

        Example:
            >>> acts = sae.encode_batch(torch.randn(2, 17, 64))  # on average k active latents per token
        """
        sae_in, _ = self._prepare_input(x, run_hooks=False)
        values, indices = self.batch_code(sae_in)
        # scatter_add: padding entries of the code (value 0) may repeat an index.
        return torch.zeros(*values.shape[:-1], self.cfg.d_sae, dtype=values.dtype, device=values.device).scatter_add(
            -1, indices, values
        )

    def training_terms(
        self, inputs: Float[Tensor, "n d_in"], target: Float[Tensor, "n d_out"], batch: TrainingBatch
    ) -> TrainingTerms:
        """Batch top-k encode and sparse decode, AuxK, and the running threshold's update."""
        sae_in = self.encoder_input(inputs)
        values, indices = self.batch_code(sae_in)
        reconstruction = kernels.decode_topk(values, indices, self.W_dec, self.b_dec)
        self._update_threshold(values, batch)
        active = values != 0
        return TrainingTerms(
            reconstruction=reconstruction,
            sparsity_loss=torch.zeros((), device=sae_in.device),
            aux_loss=auxk_loss(self, sae_in, (target - reconstruction.float()).detach(), batch),
            fired=fired_latents(indices, active, self.cfg.d_sae),
            n_active=active.sum().float(),
            extra_loss=self.extra_training_loss(values, indices, target, batch),
        )

    def extra_training_loss(
        self, values: Tensor, indices: Tensor, target: Tensor, batch: TrainingBatch
    ) -> Float[Tensor, ""] | float:
        """Loss terms beyond the full reconstruction and AuxK (Matryoshka's inner prefixes); none here."""
        return 0.0

    def _update_threshold(self, values: Tensor, batch: TrainingBatch) -> None:
        rate = getattr(batch.settings, "batchtopk_threshold_lr", DEFAULT_THRESHOLD_LR)
        smallest = kernels.smallest_kept(values).to(self.threshold.dtype)
        with torch.no_grad():
            updated = (1 - rate) * self.threshold + rate * smallest
            # A batch that kept nothing positive leaves the threshold where it was (no host synchronisation).
            self.threshold.copy_(torch.where(torch.isnan(smallest), self.threshold, updated))

    @classmethod
    def saelens_metadata(cls, cfg: SAEConfig) -> dict[str, Any]:
        """``training_architecture`` and its details, as SAELens's inference save of a BatchTopK SAE writes them."""
        return {
            "training_architecture": cls.saelens_training_architecture,
            "training_architecture_details": {"k": cfg.k, "rescale_acts_by_decoder_norm": False},
        }

    @classmethod
    def read_saelens_fields(cls, values: dict[str, Any], path: Path) -> dict[str, Any]:
        """``k``: top level in a training-form file, under ``metadata.training_architecture_details`` after an
        inference save."""
        details = (values.get("metadata") or {}).get("training_architecture_details") or {}
        k = values.get("k", details.get("k"))
        if k is None:
            raise CheckpointFormatError(f"{path}: a {cls.saelens_training_architecture} SAE needs 'k'; none found.")
        return {"k": k}

    @classmethod
    def fold_saelens_weights(cls, values: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
        """A training-form file's scalar ``topk_threshold`` becomes the uniform ``threshold``, and the decoder
        norms SAELens divides out (``rescale_acts_by_decoder_norm``) are folded into plain weights."""
        tensors = dict(tensors)
        if values.get("architecture") == cls.saelens_training_architecture:
            if "topk_threshold" not in tensors:
                raise CheckpointFormatError(
                    f"{path}: this training-form {cls.saelens_training_architecture} SAE has no 'topk_threshold', the "
                    "running threshold inference needs; save it with SAELens's save_inference_model (or train it "
                    "further so the threshold is estimated)."
                )
            scalar = tensors.pop("topk_threshold")
            d_sae = values.get("d_sae")
            if scalar.numel() != 1 or not isinstance(d_sae, int):
                raise CheckpointFormatError(f"{path}: topk_threshold has shape {list(scalar.shape)}; expected a scalar.")
            tensors["threshold"] = scalar.reshape(()).expand(d_sae).clone()
            if values.get("rescale_acts_by_decoder_norm", False):
                tensors = fold_decoder_norms(tensors)
        elif "threshold" not in tensors:
            raise CheckpointFormatError(
                f"{path}: a {cls.saelens_training_architecture} SAE used for inference needs its learned 'threshold' "
                "(one value per latent), and this file has none; load the checkpoint SAELens's "
                "save_inference_model wrote, or a training-form file with 'topk_threshold'."
            )
        return tensors
