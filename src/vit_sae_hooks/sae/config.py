"""What an SAE computes and where it was trained, as one validated dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from vit_sae_hooks.checks import config_from_dict, finite_number, positive_int
from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.sae.normalization import NORMALIZATIONS
from vit_sae_hooks.sae.registry import architecture_class
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
    False, as in clipscope) or ``"jumprelu"``; the architecture's class checks the fields it uses.
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

    def __post_init__(self) -> None:
        positive_int("d_in", self.d_in)
        positive_int("d_sae", self.d_sae)
        architecture_class(self.architecture).check_config(self)
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
    def from_dict(cls, values: dict[str, Any], source: object = None) -> SAEConfig:
        """A config from :meth:`to_dict` output; unknown keys are an error so typos do not pass silently.

        ``source`` (e.g. the file the values came from) is named in every error.

        Example:
            >>> SAEConfig.from_dict({"d_in": 8, "d_sae": 16, "architecture": "topk", "k": 4}).k
            4
        """
        return config_from_dict(cls, values, required=("d_in", "d_sae"), source=source)
