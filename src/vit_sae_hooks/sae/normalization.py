"""Input normalisation of an SAE and its inverse on the output, with the statistics returned, never stored.

Peer libraries keep the last input's mean and std on the module between ``encode`` and ``decode``; two
interleaved calls (or a hook that runs the SAE inside another SAE call) then de-normalise with the wrong
statistics. Here the statistics travel with the call as a :class:`NormStats`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

# Prisma and SAELens both add this to the std before dividing (and not when multiplying back).
LAYER_NORM_EPS = 1e-5
# Every input normalisation the published SAEs use (see :func:`normalize`).
NORMALIZATIONS: tuple[str, ...] = ("none", "layer_norm", "constant_norm_rescale", "scaling_factor")


@dataclass(frozen=True)
class NormStats:
    """How to undo one input's normalisation: ``output * scale + shift`` (None means identity).

    Example:
        >>> stats = NormStats(shift=None, scale=torch.full((4, 1), 2.0))
    """

    shift: Float[Tensor, "*batch 1"] | None
    scale: Float[Tensor, "*batch 1"] | float | None


IDENTITY = NormStats(shift=None, scale=None)


def normalize(
    x: Float[Tensor, "*batch d_in"], method: str, scaling_factor: float | None = None
) -> tuple[Float[Tensor, "*batch d_in"], NormStats]:
    """``x`` normalised by ``method`` and the statistics that :func:`denormalize` needs to undo it.

    ``layer_norm``: ``(x - mean) / (std + 1e-5)`` with the unbiased std over d_in, undone as
    ``y * std + mean``. ``constant_norm_rescale``: ``x * sqrt(d_in) / ||x||``, undone by the inverse
    factor. ``scaling_factor``: ``x * scaling_factor``, undone by dividing.

    Example:
        >>> x_norm, stats = normalize(torch.randn(2, 5, 64), "layer_norm")
    """
    if method == "none":
        return x, IDENTITY
    if method == "layer_norm":
        mean = x.mean(dim=-1, keepdim=True)
        centred = x - mean
        std = centred.std(dim=-1, keepdim=True)
        return centred / (std + LAYER_NORM_EPS), NormStats(shift=mean, scale=std)
    if method == "constant_norm_rescale":
        factor = x.shape[-1] ** 0.5 / x.norm(dim=-1, keepdim=True)
        return x * factor, NormStats(shift=None, scale=1.0 / factor)
    if method == "scaling_factor":
        assert scaling_factor is not None, "SAEConfig guarantees a factor for this method"
        return x * scaling_factor, NormStats(shift=None, scale=1.0 / scaling_factor)
    raise AssertionError(f"SAEConfig rejects normalisation {method!r} before it gets here")


def denormalize(y: Float[Tensor, "*batch d_in"], stats: NormStats) -> Float[Tensor, "*batch d_in"]:
    """``y`` mapped back to the un-normalised input space with the statistics from :func:`normalize`.

    Example:
        >>> x_norm, stats = normalize(torch.randn(3, 64), "constant_norm_rescale"); y = denormalize(x_norm, stats)
    """
    if stats.scale is not None:
        y = y * stats.scale
    if stats.shift is not None:
        y = y + stats.shift
    return y


def depends_on_input(method: str) -> bool:
    """Whether undoing ``method`` needs statistics of the particular input (not just the config).

    Example:
        >>> depends_on_input("layer_norm")
        True
    """
    return method in ("layer_norm", "constant_norm_rescale")

