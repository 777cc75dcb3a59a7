"""What an SAE computes and where it was trained, as one validated dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from vit_sae_hooks.checks import config_from_dict, finite_number, positive_int
from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.sae.normalization import NORMALIZATIONS
from vit_sae_hooks.sae.registry import sae_class
from vit_sae_hooks.tokens import check_token_set


def dtype_from_name(name: str) -> torch.dtype:
    """The floating torch dtype called ``name`` (``"float32"`` or ``"torch.float32"``).

    Example:
        >>> dtype_from_name("bfloat16")
        torch.bfloat16
    """
    candidate = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(candidate, torch.dtype) or not candidate.is_floating_point:
        raise ConfigError(
            f"dtype {name!r} is not a floating torch dtype; use one of 'float32', 'float16', 'bfloat16', 'float64'."
        )
    return candidate


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a torch dtype as written to cfg.json (``torch.float32`` -> ``"float32"``).

    Example:
        >>> dtype_name(torch.bfloat16)
        'bfloat16'
    """
    return str(dtype).removeprefix("torch.")


@dataclass
class SAEConfig:
    """Shape, architecture, input handling and provenance of one SAE.

    ``architecture``: a name from :func:`vit_sae_hooks.sae.registry.architecture_names`: ``"standard"``
    (ReLU), ``"topk"`` (keep the ``k`` largest pre-activations, ReLU on them unless ``topk_apply_relu`` is
    False, as in clipscope and saev), ``"jumprelu"``, ``"batchtopk"`` (``k`` active latents per token on
    average over a training batch; a learned threshold at inference), ``"matryoshka"`` (BatchTopK whose
    nested ``prefixes`` of latents each reconstruct the input) or ``"gated"``; the architecture's class
    checks the fields it uses.
    ``d_out``: set for a *transcoder*, which reads ``hook_name`` and predicts ``hook_name_out`` (width
    ``d_out``), optionally plus a linear ``skip_connection`` ``x @ W_skip.T``; ``None`` for an SAE, which
    reconstructs its own input.
    ``apply_b_dec_to_input``: subtract ``b_dec`` from the (normalised) input before encoding.
    ``normalize_activations``: ``"none"``, ``"layer_norm"`` (Prisma/SAELens), ``"constant_norm_rescale"``
    (x·√d_in/‖x‖) or ``"scaling_factor"`` (x·``scaling_factor``); every one is undone on the output.
    ``hook_name``: the hook the SAE reads, e.g. ``"blocks.9.hook_resid_post"``. ``token_set``: the tokens it
    was trained on, ``"all"``, ``"cls"`` or ``"patches"``. ``model_name``: the base model's hub id.

    Example:
        >>> cfg = SAEConfig(d_in=768, d_sae=49152, architecture="topk", k=64, hook_name="blocks.9.hook_resid_post")
    """

    d_in: int
    d_sae: int
    architecture: str = "standard"
    k: int | None = None
    topk_apply_relu: bool = True
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    scaling_factor: float | None = None
    hook_name: str | None = None
    token_set: str = "all"
    model_name: str | None = None
    dtype: str = "float32"
    d_out: int | None = None
    hook_name_out: str | None = None
    skip_connection: bool = False
    prefixes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        positive_int("d_in", self.d_in)
        positive_int("d_sae", self.d_sae)
        if isinstance(self.prefixes, list):
            self.prefixes = tuple(self.prefixes)
        self._check_transcoder_fields()
        sae_class(self).check_config(self)
        if self.normalize_activations not in NORMALIZATIONS:
            raise ConfigError(
                f"normalize_activations {self.normalize_activations!r} is not supported; use one of {NORMALIZATIONS}."
            )
        if self.normalize_activations == "scaling_factor":
            if self.scaling_factor is None:
                raise ConfigError("normalize_activations='scaling_factor' needs a finite positive scaling_factor, got None.")
            self.scaling_factor = finite_number("scaling_factor", self.scaling_factor, minimum=0, strictly=True)
        elif self.scaling_factor is not None:
            raise ConfigError(
                f"scaling_factor={self.scaling_factor!r} is set but normalize_activations is "
                f"{self.normalize_activations!r}; set normalize_activations='scaling_factor' or drop the factor."
            )
        check_token_set(self.token_set, "token_set")
        self.dtype = dtype_name(dtype_from_name(self.dtype))

    def _check_transcoder_fields(self) -> None:
        if self.d_out is None:
            if self.hook_name_out is not None or self.skip_connection:
                raise ConfigError(
                    f"hook_name_out={self.hook_name_out!r} / skip_connection={self.skip_connection!r} describe a "
                    "transcoder; set d_out (the width of the output hook) as well, or drop them for an SAE."
                )
            return
        positive_int("d_out", self.d_out)
        if self.apply_b_dec_to_input:
            raise ConfigError(
                "a transcoder's b_dec is its output bias (width d_out), so it cannot be subtracted from the input; "
                "set apply_b_dec_to_input=False (an input pre-bias folds into b_enc as b_enc - pre_bias @ W_enc)."
            )
        if self.hook_name_out is not None and self.hook_name_out == self.hook_name:
            raise ConfigError(
                f"a transcoder reads one hook and predicts another, but hook_name and hook_name_out are both "
                f"{self.hook_name!r}; use an SAE (d_out=None) to reconstruct a hook, or name the output hook, e.g. "
                "hook_name='blocks.5.ln2.hook_normalized', hook_name_out='blocks.5.hook_mlp_out'."
            )

    @property
    def is_transcoder(self) -> bool:
        """Whether this describes a transcoder (predicts ``hook_name_out`` from ``hook_name``), e.g. ``d_out=768``.

        Example:
            >>> SAEConfig(d_in=8, d_sae=16, d_out=8, apply_b_dec_to_input=False).is_transcoder
            True
        """
        return self.d_out is not None

    @property
    def output_width(self) -> int:
        """The width of the reconstruction: ``d_out`` for a transcoder, ``d_in`` for an SAE.

        Example:
            >>> SAEConfig(d_in=8, d_sae=16).output_width
            8
        """
        return self.d_in if self.d_out is None else self.d_out

    @property
    def torch_dtype(self) -> torch.dtype:
        """The parameters' dtype as a ``torch.dtype``.

        Example:
            >>> SAEConfig(d_in=8, d_sae=16, dtype="float64").torch_dtype
            torch.float64
        """
        return dtype_from_name(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-ready values.

        Example:
            >>> SAEConfig(d_in=8, d_sae=16).to_dict()["architecture"]
            'standard'
        """
        values = asdict(self)
        if self.prefixes is not None:
            values["prefixes"] = list(self.prefixes)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: object = None) -> SAEConfig:
        """A config from :meth:`to_dict` output; unknown keys are an error so typos do not pass silently.

        ``source`` (e.g. the file the values came from) is named in every error.

        Example:
            >>> SAEConfig.from_dict({"d_in": 8, "d_sae": 16, "architecture": "topk", "k": 4}).k
            4
        """
        return config_from_dict(cls, values, required=("d_in", "d_sae"), source=source)
