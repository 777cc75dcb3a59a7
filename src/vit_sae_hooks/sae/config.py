"""What an SAE computes and where it was trained, as one validated dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

import torch

from vit_sae_hooks.errors import ConfigError

Architecture = Literal["standard", "topk", "jumprelu"]
Normalization = Literal["none", "layer_norm", "constant_norm_rescale", "scaling_factor"]
TokenSet = Literal["all", "cls", "patches"]

ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
TOKEN_SETS: tuple[str, ...] = get_args(TokenSet)


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

    ``architecture``: ``"standard"`` (ReLU), ``"topk"`` (keep the ``k`` largest pre-activations,
    ReLU on them unless ``topk_apply_relu`` is False, as in clipscope) or ``"jumprelu"``.
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
    architecture: Architecture = "standard"
    k: int | None = None
    topk_apply_relu: bool = True
    apply_b_dec_to_input: bool = True
    normalize_activations: Normalization = "none"
    scaling_factor: float | None = None
    hook_name: str | None = None
    token_set: TokenSet = "all"
    model_name: str | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"architecture {self.architecture!r} is not supported; use one of {ARCHITECTURES} "
                "(gated and other architectures are not implemented)."
            )
        if self.architecture == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
                raise ConfigError(
                    f"a topk SAE needs an integer k with 1 <= k <= d_sae={self.d_sae}, got k={self.k!r}."
                )
        elif self.k is not None:
            raise ConfigError(f"k={self.k!r} is only meaningful for architecture 'topk', not {self.architecture!r}.")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ConfigError(
                f"normalize_activations {self.normalize_activations!r} is not supported; use one of {NORMALIZATIONS}."
            )
        if self.normalize_activations == "scaling_factor":
            factor = self.scaling_factor
            if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not math.isfinite(factor) or factor <= 0:
                raise ConfigError(
                    f"normalize_activations='scaling_factor' needs a finite positive scaling_factor, got {factor!r}."
                )
            self.scaling_factor = float(factor)
        elif self.scaling_factor is not None:
            raise ConfigError(
                f"scaling_factor={self.scaling_factor!r} is set but normalize_activations is "
                f"{self.normalize_activations!r}; set normalize_activations='scaling_factor' or drop the factor."
            )
        if self.token_set not in TOKEN_SETS:
            raise ConfigError(f"token_set {self.token_set!r} is not one of {TOKEN_SETS}.")
        self.dtype = dtype_name(dtype_from_name(self.dtype))

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
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SAEConfig:
        """A config from :meth:`to_dict` output; unknown keys are an error so typos do not pass silently.

        Example:
            >>> SAEConfig.from_dict({"d_in": 8, "d_sae": 16, "architecture": "topk", "k": 4}).k
            4
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown SAEConfig fields {unknown}; valid fields are {sorted(known)}.")
        missing = sorted(name for name in ("d_in", "d_sae") if name not in values)
        if missing:
            raise ConfigError(f"SAEConfig needs {missing}.")
        return cls(**values)
