"""SAE evaluation: the Prisma tables' ten columns and CLIP-Scope's metrics for any SAE on any HookedViT, and
comparisons of SAE dictionaries (:mod:`~vit_sae_hooks.evals.dictionary`) and sparse probing
(:mod:`~vit_sae_hooks.evals.probing`).

Example:
    >>> from vit_sae_hooks.evals import evaluate
    >>> result = evaluate(model, sae, "imagenet/val", head="zero-shot:imagenet_head.safetensors", limit=5000)
    >>> print(result.markdown_header()); print(result.markdown_row())
"""

from vit_sae_hooks.evals.dictionary import DictionaryComparison, compare_dictionaries, nearest_directions, redundancy
from vit_sae_hooks.evals.evaluate import (
    CLIPSCOPE_COLUMNS,
    COLUMNS,
    PRISMA_CODE_VARIANTS,
    PRISMA_COLUMNS,
    EvalResult,
    evaluate,
    format_row,
    sweep,
)
from vit_sae_hooks.evals.heads import ModelHead, ZeroShotHead, build_zero_shot_head, head_for
from vit_sae_hooks.evals.metrics import DownstreamStats, ReconstructionStats, ce_recovered_pct
from vit_sae_hooks.evals.probing import PooledActivations, ProbeResult, pooled_activations, probe_pooled, sparse_probing

__all__ = [
    "CLIPSCOPE_COLUMNS",
    "COLUMNS",
    "PRISMA_CODE_VARIANTS",
    "PRISMA_COLUMNS",
    "DictionaryComparison",
    "DownstreamStats",
    "EvalResult",
    "ModelHead",
    "PooledActivations",
    "ProbeResult",
    "ReconstructionStats",
    "ZeroShotHead",
    "build_zero_shot_head",
    "ce_recovered_pct",
    "compare_dictionaries",
    "evaluate",
    "format_row",
    "head_for",
    "nearest_directions",
    "pooled_activations",
    "probe_pooled",
    "redundancy",
    "sparse_probing",
    "sweep",
]
