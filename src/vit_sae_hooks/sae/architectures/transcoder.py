"""Transcoders: sparse modules that read one hook and predict another (e.g. read ``blocks.L.ln2.hook_normalized``
and predict ``blocks.L.hook_mlp_out``), with any of the registered activations and an optional linear skip.

``SAE(cfg)`` with ``cfg.d_out`` set builds the architecture's transcoder class (``TopKTranscoder``,
``ReLUTranscoder``, ...): the architecture's class with :class:`Transcoder` in front, which changes what the
decoder predicts and nothing about how latents are chosen.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_sae_hooks.sae.config import SAEConfig
from vit_sae_hooks.sae.formats.saelens import SAELENS_TRANSCODERS
from vit_sae_hooks.sae.registry import register_transcoder
from vit_sae_hooks.sae.sae import SAE, TrainingBatch, TrainingTerms


@register_transcoder
class Transcoder(SAE):
    """A transcoder: ``W_dec [d_sae, d_out]`` and ``b_dec [d_out]`` predict the output hook ``hook_name_out``
    from the input hook ``hook_name``; with ``skip_connection``, plus ``x @ W_skip.T`` (``W_skip [d_out, d_in]``)
    of the raw input, added before the output is de-normalised (Prisma's order; the same as SAELens's when
    nothing is normalised).

    ``b_dec`` is the output bias, so nothing is subtracted from the input (``apply_b_dec_to_input=False``);
    an input pre-bias folds into ``b_enc``. ``forward(x, target)`` with ``use_error_term`` adds
    ``target - clean prediction``, so splicing it where the output hook is (see ``HookedViT.add_sae``) leaves
    the model unchanged until a feature is edited.

    Example:
        >>> tc = SAE(SAEConfig(d_in=64, d_sae=256, architecture="topk", k=8, d_out=64, apply_b_dec_to_input=False,
        ...                    hook_name="blocks.3.ln2.hook_normalized", hook_name_out="blocks.3.hook_mlp_out"))
    """

    W_skip: Float[Tensor, "d_out d_in"]

    @classmethod
    def extra_parameter_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """The architecture's, plus ``W_skip [d_out, d_in]`` with a skip connection."""
        shapes = dict(super().extra_parameter_shapes(cfg))
        if cfg.skip_connection:
            shapes["W_skip"] = (cfg.output_width, cfg.d_in)
        return shapes

    def add_skip(self, recon: Float[Tensor, "*batch d_out"], x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
        """``recon + x @ W_skip.T`` with a skip connection, ``recon`` otherwise."""
        return recon + x @ self.W_skip.T if self.cfg.skip_connection else recon

    def training_terms(
        self, inputs: Float[Tensor, "n d_in"], target: Float[Tensor, "n d_out"], batch: TrainingBatch
    ) -> TrainingTerms:
        """The architecture's terms for ``target`` minus the skip term, with the skip added back to the prediction.

        The sparse code then explains what the linear skip does not, and AuxK's residual is the true one.
        """
        skip = self.add_skip(torch.zeros_like(target), inputs.to(target.dtype))
        terms = super().training_terms(inputs, target - skip, batch)
        terms.reconstruction = terms.reconstruction + skip.to(terms.reconstruction.dtype)
        return terms

    @classmethod
    def saelens_architecture_for(cls, cfg: SAEConfig) -> str:
        """``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder`` or ``jumprelu_skip_transcoder``."""
        return SAELENS_TRANSCODERS.get((cfg.architecture, cfg.skip_connection), "transcoder")

    @classmethod
    def saelens_difference(cls, cfg: SAEConfig) -> str | None:
        """SAELens has ReLU and JumpReLU transcoders only, which never de-normalise their output."""
        if (cfg.architecture, cfg.skip_connection) not in SAELENS_TRANSCODERS:
            return f"it is a {cfg.architecture} transcoder, and SAELens has only ReLU and JumpReLU transcoders"
        if cfg.normalize_activations != "none":
            return (
                f"it normalises its input ({cfg.normalize_activations!r}) and de-normalises its prediction, which "
                "SAELens's transcoders do not"
            )
        return super().saelens_difference(cfg)

    @classmethod
    def saelens_fields(cls, cfg: SAEConfig) -> dict[str, Any]:
        """``d_out`` (the output hook goes in ``metadata.hook_name_out``)."""
        return {**super().saelens_fields(cfg), "d_out": cfg.d_out}

    @classmethod
    def saelens_metadata(cls, cfg: SAEConfig) -> dict[str, Any]:
        """``hook_name_out``."""
        return {**super().saelens_metadata(cfg), "hook_name_out": cfg.hook_name_out}
