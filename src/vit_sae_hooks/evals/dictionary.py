"""Comparing SAE dictionaries by their decoder directions: nearest neighbours, redundancy, and how far two SAEs
(trained with other seeds, sizes, architectures or on other layers) learned the same features.

A feature's direction is its decoder row ``W_dec[i]`` (where it writes in the hook's space); two features match
when the cosine of their directions is high. The mean max cosine similarity (MMCS, Sharkey et al. 2022) of SAE
A to SAE B is ``mean_i max_j cos(W_dec_A[i], W_dec_B[j])``: 1 when every feature of A has an exact copy in B.
Cosines are signed (activations are non-negative, so a flipped direction is another feature), computed in
float32 on blocks of ``block x block`` so that even 65536-feature dictionaries need little memory.

Example:
    >>> comparison = compare_dictionaries(sae_seed0, sae_seed1)
    >>> comparison.mmcs, comparison.mutual_fraction, comparison.fraction_above(0.9)
    (0.83, 0.61, 0.52)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vit_sae_hooks.checks import described_shape, positive_int
from vit_sae_hooks.errors import ConfigError, InputShapeError

if TYPE_CHECKING:
    from vit_sae_hooks.sae import SAE


def nearest_directions(
    directions: Float[Tensor, "n_a d"], others: Float[Tensor, "n_b d"] | None = None, n: int = 1, block: int = 2048,
) -> tuple[Int[Tensor, "n_a n"], Float[Tensor, "n_a n"]]:
    """For each row of ``directions``, the ``n`` rows of ``others`` with the highest cosine similarity (positions,
    cosines), best first; without ``others``, the ``n`` most similar *other* rows of ``directions`` itself.

    Zero rows have cosine 0 with everything. Within one matrix the cosine matrix is symmetric, so only its blocks
    on and above the diagonal are computed (half the GEMM), each serving the rows of both its blocks; memory
    stays at ``block x block`` similarities.

    Example:
        >>> positions, cosines = nearest_directions(sae.W_dec, n=8)           # each feature's 8 closest others
        >>> positions, cosines = nearest_directions(sae_a.W_dec, sae_b.W_dec)  # each feature's best match in B
    """
    positive_int("n", n)
    positive_int("block", block)
    a = _unit_rows(directions, "directions")
    b = a if others is None else _unit_rows(others, "others")
    if a.shape[1] != b.shape[1]:
        raise InputShapeError(
            f"directions are {a.shape[1]}-dimensional but others are {b.shape[1]}-dimensional; compare dictionaries "
            "that write to the same space (decoders of SAEs on hooks of the same width)"
        )
    candidates = b.shape[0] - (1 if others is None else 0)
    if candidates < 1:
        raise ConfigError("need at least one other direction to compare with (a single row has no neighbour)")
    n = min(n, candidates)
    best_cosines = torch.full((a.shape[0], n), -float("inf"))
    best_positions = torch.zeros((a.shape[0], n), dtype=torch.long)

    def merge(rows: slice, cosines: Tensor, positions: Tensor) -> None:
        merged = torch.cat([best_cosines[rows], cosines], dim=1)
        kept = merged.topk(n, dim=1)
        best_positions[rows] = torch.cat([best_positions[rows], positions], dim=1).gather(1, kept.indices)
        best_cosines[rows] = kept.values

    for first in range(0, a.shape[0], block):
        rows = slice(first, first + block)
        for second in range(first if others is None else 0, b.shape[0], block):
            columns = slice(second, second + block)
            similarity = a[rows] @ b[columns].T
            if others is None and second == first:
                similarity.fill_diagonal_(-float("inf"))
            best = similarity.topk(min(n, similarity.shape[1]), dim=1)
            merge(rows, best.values, best.indices + second)
            if others is None and second != first:
                # A contiguous copy: top-k along dim 0 of the strided matrix is twice as slow.
                best = similarity.T.contiguous().topk(min(n, similarity.shape[0]), dim=1)
                merge(columns, best.values, best.indices + first)
    return best_positions, best_cosines


def _unit_rows(matrix: Tensor, name: str) -> Float[Tensor, "n d"]:
    if not isinstance(matrix, Tensor) or matrix.ndim != 2 or not matrix.is_floating_point():
        shape = described_shape(matrix)
        raise InputShapeError(f"{name} must be a float matrix [n, d] (e.g. sae.W_dec), got {shape}")
    return torch.nn.functional.normalize(matrix.detach().float().cpu(), dim=-1)


@dataclass(frozen=True)
class DictionaryComparison:
    """How the features of SAE A are found in SAE B, and back.

    ``match_a[i]`` is the feature of B closest to feature ``i`` of A, ``cosine_a[i]`` their cosine;
    ``match_b``/``cosine_b`` the same from B to A.

    Example:
        >>> comparison = compare_dictionaries(sae_a, sae_b); comparison.mmcs
        0.83
    """

    match_a: Int[Tensor, " d_sae_a"]
    cosine_a: Float[Tensor, " d_sae_a"]
    match_b: Int[Tensor, " d_sae_b"]
    cosine_b: Float[Tensor, " d_sae_b"]

    @property
    def mmcs(self) -> float:
        """Mean max cosine similarity of A's features to B's (``mean_i max_j cos``)."""
        return float(self.cosine_a.double().mean())

    @property
    def mmcs_reverse(self) -> float:
        """Mean max cosine similarity of B's features to A's."""
        return float(self.cosine_b.double().mean())

    @property
    def mutual(self) -> Bool[Tensor, " d_sae_a"]:
        """Which features of A are their match's match (a one-to-one pair)."""
        return self.match_b[self.match_a] == torch.arange(self.match_a.numel())

    @property
    def mutual_fraction(self) -> float:
        """Fraction of A's features in one-to-one pairs with B's."""
        return float(self.mutual.double().mean())

    def fraction_above(self, threshold: float) -> float:
        """Fraction of A's features with a match in B at cosine ``>= threshold``.

        Example:
            >>> comparison.fraction_above(0.9)
            0.52
        """
        return float((self.cosine_a >= threshold).double().mean())

    def summary(self) -> dict[str, float]:
        """The headline numbers, e.g. for a table or JSON.

        Example:
            >>> compare_dictionaries(sae_a, sae_b).summary()["mmcs"]
            0.83
        """
        return {
            "mmcs": self.mmcs, "mmcs_reverse": self.mmcs_reverse, "mutual_fraction": self.mutual_fraction,
            "fraction_above_0.9": self.fraction_above(0.9), "fraction_above_0.7": self.fraction_above(0.7),
        }


def compare_dictionaries(sae_a: SAE, sae_b: SAE, block: int = 2048) -> DictionaryComparison:
    """Match every feature of ``sae_a`` to its closest feature of ``sae_b`` by decoder cosine, and back.

    Both decoders must write to spaces of the same width (the same hook, or hooks of equal width, e.g. residual
    streams of two layers); the hooks are not checked, so cross-layer comparisons work.

    Example:
        >>> comparison = compare_dictionaries(sae_seed0, sae_seed1)
        >>> comparison.mmcs, comparison.mutual_fraction
        (0.83, 0.61)
    """
    match_a, cosine_a = nearest_directions(sae_a.W_dec, sae_b.W_dec, 1, block)
    match_b, cosine_b = nearest_directions(sae_b.W_dec, sae_a.W_dec, 1, block)
    return DictionaryComparison(match_a[:, 0], cosine_a[:, 0], match_b[:, 0], cosine_b[:, 0])


def redundancy(sae: SAE, block: int = 2048) -> tuple[Int[Tensor, " d_sae"], Float[Tensor, " d_sae"]]:
    """Each feature's closest *other* feature of the same SAE and their decoder cosine: near-duplicates (cosine
    near 1) are features the dictionary spent twice.

    Example:
        >>> closest, cosines = redundancy(sae); (cosines > 0.9).float().mean()
        tensor(0.0031)
    """
    positions, cosines = nearest_directions(sae.W_dec, None, 1, block)
    return positions[:, 0], cosines[:, 0]
