"""The published vision SAEs users start from, as data: short names, hub locations, metadata and metrics.

Four ViT-Prisma SAE suites and its TopK transcoders on the open_clip model
``laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K``, the eight CLIP-Scope SAEs on
``laion/CLIP-ViT-L-14-laion2B-s32B-b82K`` and saev's first CLIP, DINOv2 and BioCLIP releases; numbers as
their authors published them (see docs/pretrained.md for the column definitions). Reach an entry by short
name or by query::

    SAE.from_pretrained("prisma/clip-b32/all-patches/resid_post/9")
    pretrained.find(layer=9, hook="resid_post", tokens="all")
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from vit_sae_hooks.errors import ResolutionError, closest_names
from vit_sae_hooks.hook_names import split_block_hook
from vit_sae_hooks.hub import resolve_local_or_hub
from vit_sae_hooks.sae.config import SAEConfig
from vit_sae_hooks.sae.formats import HUB_FILE_PATTERNS

PRISMA_BASE_MODEL = "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"
CLIPSCOPE_BASE_MODEL = "laion/CLIP-ViT-L-14-laion2B-s32B-b82K"
CLIPSCOPE_REPO = "lewington/CLIP-ViT-L-scope"

# Prisma repos hold config.json next to weights.pt or n_images_<count>.pt (see sae/formats/prisma.py).
_PRISMA_FILES = ("config.json", "*.pt")
_HOOK_SUFFIXES = {"resid_post": "hook_resid_post", "mlp_out": "hook_mlp_out", "ln2_normalized": "ln2.hook_normalized"}
_TORCH_OR_SAFETENSORS = (".pt", ".pth", ".safetensors")


@dataclass(frozen=True)
class PretrainedSAE:
    """One published SAE: where it lives on the hub, what it reads, and its published metrics.

    ``files`` are the hub file patterns to fetch (relative to ``subfolder``); ``filename`` names the
    weights file when it is known in advance. ``metrics`` keys are listed in docs/pretrained.md. A
    transcoder reads ``hook`` and predicts ``hook_out``; ``notes`` says what a user must know before use.

    Example:
        >>> entry = get("prisma/clip-b32/all-patches/resid_post/9"); entry.hook_name
        'blocks.9.hook_resid_post'
    """

    name: str
    suite: str
    repo_id: str
    layer: int
    hook: str
    tokens: str
    model_name: str
    architecture: str
    d_in: int
    files: tuple[str, ...]
    subfolder: str | None = None
    filename: str | None = None
    k: int | None = None
    d_sae: int | None = None
    l1_coefficient: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    hook_out: str | None = None
    notes: str | None = None

    @property
    def hook_name(self) -> str:
        """The model hook the SAE reads, e.g. ``"blocks.9.hook_resid_post"``."""
        return f"blocks.{self.layer}.{_HOOK_SUFFIXES[self.hook]}"

    @property
    def hook_name_out(self) -> str | None:
        """The hook a transcoder predicts, e.g. ``"blocks.9.hook_mlp_out"`` (None for an SAE)."""
        return None if self.hook_out is None else f"blocks.{self.layer}.{_HOOK_SUFFIXES[self.hook_out]}"

    @property
    def hub_path(self) -> str:
        """``repo_id`` plus the subfolder, as :func:`vit_sae_hooks.hub.resolve_local_or_hub` takes it, e.g. ``"lewington/CLIP-ViT-L-scope/22_resid"``."""
        return f"{self.repo_id}/{self.subfolder}" if self.subfolder else self.repo_id

    def resolve(self, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
        """The local checkpoint folder (or file) of this SAE, downloaded or taken from the hub cache.

        Example:
            >>> path = get("clipscope/clip-l14/resid_post/22").resolve()
        """
        if self.filename is not None:
            folder = resolve_local_or_hub(self.hub_path, [self.filename], revision=revision, cache_dir=cache_dir)
            return folder / self.filename
        if self.repo_id == CLIPSCOPE_REPO:
            final = _final_clipscope_checkpoint(self, revision)
            if final is not None:
                return replace(self, filename=final).resolve(revision=revision, cache_dir=cache_dir)
        return resolve_local_or_hub(self.hub_path, list(self.files), revision=revision, cache_dir=cache_dir)

    def fill_metadata(self, config: SAEConfig) -> SAEConfig:
        """``config`` with the hook and base model taken from this entry where the checkpoint records none.

        Example:
            >>> config = get("clipscope/clip-l14/resid_post/22").fill_metadata(sae.cfg)
        """
        filled = replace(
            config, hook_name=config.hook_name or self.hook_name, model_name=config.model_name or self.model_name
        )
        if filled.is_transcoder and filled.hook_name_out is None:
            filled = replace(filled, hook_name_out=self.hook_name_out)
        return filled


def _final_clipscope_checkpoint(entry: PretrainedSAE, revision: str | None) -> str | None:
    # CLIP-Scope saves a checkpoint every ~100M tokens as {layer}_resid/{tokens_seen}.pt; only the last is wanted,
    # and its name is only known by listing the repo (online). Offline, the cached files decide.
    import huggingface_hub

    try:
        names = huggingface_hub.list_repo_files(entry.repo_id, revision=revision)
    except Exception:
        return None
    counts = [
        (int(match.group(1)), name.rsplit("/", 1)[-1])
        for name in names
        if (match := re.fullmatch(rf"{re.escape(entry.subfolder or '')}/(\d+)\.pt", name))
    ]
    return max(counts)[1] if counts else None

# Prisma tables, verbatim: hub repo id, layer, sublayer, [l1 coefficient,] then the table's metric columns.
_ALL_PATCHES_ROWS = (
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-0-hook_mlp_out-l1-1e-05", 0, "mlp_out", 1e-5, 98.7, 604.44, 36.92, 0.994, 0.998, 6.762, 6.762, 6.779, 99.51, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-0-hook_resid_post-l1-1e-05", 0, "resid_post", 1e-5, 98.6, 1110.9, 40.46, 0.993, 0.988, 6.762, 6.763, 6.908, 99.23, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-1-hook_mlp_out-l1-1e-05", 1, "mlp_out", 1e-5, 98.4, 1476.8, 97.82, 0.992, 0.994, 6.762, 6.762, 6.889, 99.40, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-1-hook_resid_post-l1-1e-05", 1, "resid_post", 1e-5, 98.3, 1508.4, 27.39, 0.991, 0.989, 6.762, 6.763, 6.908, 99.02, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-2-hook_mlp_out-l1-1e-05", 2, "mlp_out", 1e-5, 98.0, 1799.7, 376.0, 0.992, 0.998, 6.762, 6.762, 6.803, 99.44, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-2-hook_resid_post-l1-5e-05", 2, "resid_post", 5e-5, 90.6, 717.84, 10.11, 0.944, 0.960, 6.762, 6.767, 6.908, 96.34, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-3-hook_mlp_out-l1-1e-05", 3, "mlp_out", 1e-5, 98.1, 1893.4, 648.2, 0.992, 0.999, 6.762, 6.762, 6.784, 99.54, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-3-hook_resid_post-l1-1e-05", 3, "resid_post", 1e-5, 98.1, 2053.9, 77.90, 0.989, 0.996, 6.762, 6.762, 6.908, 99.79, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-4-hook_mlp_out-l1-1e-05", 4, "mlp_out", 1e-5, 98.1, 1901.2, 1115.0, 0.993, 0.999, 6.762, 6.762, 6.786, 99.55, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-4-hook_resid_post-l1-1e-05", 4, "resid_post", 1e-5, 98.0, 2068.3, 156.7, 0.989, 0.997, 6.762, 6.762, 6.908, 99.74, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-5-hook_mlp_out-l1-1e-05", 5, "mlp_out", 1e-5, 98.2, 1761.5, 1259.0, 0.993, 0.999, 6.762, 6.762, 6.797, 99.76, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-5-hook_resid_post-l1-1e-05", 5, "resid_post", 1e-5, 98.1, 1953.8, 228.5, 0.990, 0.997, 6.762, 6.762, 6.908, 99.80, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-6-hook_mlp_out-l1-1e-05", 6, "mlp_out", 1e-5, 98.3, 1598.0, 1337.0, 0.993, 0.999, 6.762, 6.762, 6.789, 99.83, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-6-hook_resid_post-l1-1e-05", 6, "resid_post", 1e-5, 98.2, 1717.5, 321.3, 0.991, 0.996, 6.762, 6.762, 6.908, 99.93, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-7-hook_mlp_out-l1-1e-05", 7, "mlp_out", 1e-5, 98.2, 1535.3, 1300.0, 0.992, 0.999, 6.762, 6.762, 6.796, 100.17, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-7-hook_resid_post-l1-1e-05", 7, "resid_post", 1e-5, 98.2, 1688.4, 494.3, 0.991, 0.995, 6.762, 6.761, 6.908, 100.24, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-8-hook_mlp_out-l1-1e-05", 8, "mlp_out", 1e-5, 97.8, 1074.5, 1167.0, 0.990, 0.998, 6.762, 6.761, 6.793, 100.57, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-8-hook_resid_post-l1-1e-05", 8, "resid_post", 1e-5, 98.2, 1570.8, 791.3, 0.991, 0.992, 6.762, 6.761, 6.908, 100.41, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-9-hook_mlp_out-l1-1e-05", 9, "mlp_out", 1e-5, 97.6, 856.68, 1076.0, 0.989, 0.998, 6.762, 6.762, 6.792, 100.28, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-9-hook_resid_post-l1-1e-05", 9, "resid_post", 1e-5, 98.2, 1533.5, 1053.0, 0.991, 0.989, 6.762, 6.761, 6.908, 100.32, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-10-hook_mlp_out-l1-1e-05", 10, "mlp_out", 1e-5, 98.1, 788.49, 965.5, 0.991, 0.998, 6.762, 6.762, 6.772, 101.50, 99.80),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-10-hook_resid_post-l1-1e-05", 10, "resid_post", 1e-5, 98.4, 1292.6, 1010.0, 0.992, 0.987, 6.762, 6.760, 6.908, 100.83, 99.99),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-11-hook_mlp_out-l1-5e-05", 11, "mlp_out", 5e-5, 89.7, 748.14, 745.5, 0.972, 0.993, 6.762, 6.759, 6.768, 135.77, 100),
    ("prisma-multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-11-hook_resid_post-l1-1e-05", 11, "resid_post", 1e-5, 98.4, 1405.0, 1189.0, 0.993, 0.987, 6.762, 6.765, 6.908, 98.03, 99.99),
)
_CLS_ROWS = (
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-CLS_0-hook_resid_post-936.799987792969-82", 0, "resid_post", 2e-8, 82, 934.83, 0.98008, 0.99995, 6.7622, 6.7622, 6.9084, 99.9984, 4.33),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-CLS_1-hook_resid_post-314.175018310547-85", 1, "resid_post", 8e-6, 85, 314.13, 0.97211, 0.99994, 6.7622, 6.7622, 6.9083, 100.00, 2.82),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-CLS_2-hook_resid_post-711.121887207031-96", 2, "resid_post", 9e-8, 96, 711.84, 0.98831, 0.99997, 6.7622, 6.7622, 6.9083, 99.9977, 2.54),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-CLS_3-hook_resid_post-686.334411621094-95", 3, "resid_post", 1e-8, 95, 687.41, 0.98397, 0.99994, 6.7622, 6.7622, 6.9085, 99.9998, 4.49),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-CLS_4-hook_resid_post-682.543762207031-95", 4, "resid_post", 9e-8, 95, 681.08, 0.98092, 0.99988, 6.7622, 6.7622, 6.9082, 100.00, 15.75),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-CLS_5-hook_resid_post-510.356262207031-94", 5, "resid_post", 1e-7, 94, 506.77, 0.97404, 0.99966, 6.7622, 6.7622, 6.9081, 99.9911, 16.80),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-CLS_6-hook_resid_post-430.556243896484-92", 6, "resid_post", 1e-8, 92, 423.70, 0.96474, 0.99913, 6.7622, 6.7622, 6.9083, 99.9971, 29.46),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-CLS_7-hook_resid_post-492.959381103516-88", 7, "resid_post", 2e-6, 88, 492.68, 0.93899, 0.99737, 6.7622, 6.7622, 6.9082, 99.9583, 51.68),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-CLS_8-hook_resid_post-635.018737792969-76", 8, "resid_post", 4e-8, 76, 623.01, 0.89168, 0.99110, 6.7622, 6.7625, 6.9087, 99.7631, 82.07),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-CLS_9-hook_resid_post-518.621887207031-74", 9, "resid_post", 1e-12, 74, 521.90, 0.87076, 0.98191, 6.7622, 6.7628, 6.9083, 99.5425, 93.68),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-CLS_10-hook_resid_post-552.512512207031-74", 10, "resid_post", 3e-7, 74, 533.94, 0.87646, 0.96514, 6.7622, 6.7635, 6.9082, 99.1070, 99.98),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-CLS_11-hook_resid_post-383.75-65", 11, "resid_post", 1e-8, 65, 386.09, 0.81890, 0.89607, 6.7622, 6.7853, 6.9086, 84.1918, 99.996),
)
_CLS_TOPK_ROWS = (
    ("Prisma-Multimodal/sae-top_k-64-cls_only-layer_0-hook_resid_post", 0, "resid_post", 90, 64, 0.98764, 0.99998, 6.7622, 6.7622, 6.9084, 99.995, 46.80),
    ("Prisma-Multimodal/sae-top_k-64-cls_only-layer_1-hook_resid_post", 1, "resid_post", 96, 64, 0.99429, 0.99999, 6.7622, 6.7622, 6.9083, 100.00, 4.86),
    ("Prisma-Multimodal/sae-top_k-64-cls_only-layer_2-hook_resid_post", 2, "resid_post", 96, 64, 0.99000, 0.99998, 6.7622, 6.7622, 6.9083, 100.00, 5.50),
    ("Prisma-Multimodal/sae-top_k-64-cls_only-layer_3-hook_resid_post", 3, "resid_post", 95, 64, 0.98403, 0.99995, 6.7622, 6.7622, 6.9085, 100.00, 5.21),
    ("Prisma-Multimodal/sae-top_k-64-cls_only-layer_4-hook_resid_post", 4, "resid_post", 94, 64, 0.97485, 0.99986, 6.7621, 6.7622, 6.9082, 99.998, 6.81),
    ("Prisma-Multimodal/sae-top_k-64-cls_only-layer_5-hook_resid_post", 5, "resid_post", 93, 64, 0.96985, 0.99962, 6.7622, 6.7622, 6.9081, 99.997, 21.89),
    ("Prisma-Multimodal/sae-top_k-64-cls_only-layer_6-hook_resid_post", 6, "resid_post", 92, 64, 0.96401, 0.99912, 6.7622, 6.7622, 6.9083, 100.00, 28.81),
    ("Prisma-Multimodal/sae-top_k-64-cls_only-layer_7-hook_resid_post", 7, "resid_post", 90, 64, 0.95057, 0.99797, 6.7622, 6.7621, 6.9082, 100.03, 65.84),
    ("Prisma-Multimodal/sae-top_k-64-cls_only-layer_8-hook_resid_post", 8, "resid_post", 87, 64, 0.93029, 0.99475, 6.7622, 6.7620, 6.9087, 100.11, 93.75),
    ("Prisma-Multimodal/sae-top_k-64-cls_only-layer_9-hook_resid_post", 9, "resid_post", 85, 64, 0.91814, 0.98865, 6.7622, 6.7616, 6.9083, 100.43, 98.90),
    ("Prisma-Multimodal/sae-top_k-64-cls_only-layer_10-hook_resid_post", 10, "resid_post", 86, 64, 0.93072, 0.97929, 6.7622, 6.7604, 6.9082, 101.19, 94.55),
    ("Prisma-Multimodal/sae-top_k-64-cls_only-layer_11-hook_resid_post", 11, "resid_post", 84, 64, 0.91880, 0.94856, 6.7622, 6.7578, 6.9086, 102.97, 97.99),
)
_PATCHES_ROWS = (
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-Spatial_max_0-hook_resid_post-989.203430175781-99", 0, "resid_post", 1e-12, 99, 989.19, 0.99, 0.99, 6.7621, 6.7621, 6.9084, 99.9981, 100.00),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-Spatial_max_1-hook_resid_post-757.82958984375-99", 1, "resid_post", 3e-11, 99, 757.83, 0.99, 0.99, 6.7622, 6.7622, 6.9083, 99.9969, 45.39),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-Spatial_max_2-hook_resid_post-1007.89801025391-99", 2, "resid_post", 4e-12, 99, 1007.89, 0.99, 0.99, 6.7622, 6.7622, 6.9083, 100.00, 97.93),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-Spatial_max_3-hook_resid_post-935.601989746094-99", 3, "resid_post", 2e-8, 99, 935.06, 0.99, 0.99, 6.7622, 6.7622, 6.9085, 99.9882, 100.00),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-Spatial_max_4-hook_resid_post-965.410095214844-99", 4, "resid_post", 3e-8, 99, 965.15, 0.99, 0.99, 6.7622, 6.7622, 6.9082, 99.9842, 100.00),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-Spatial_max_5-hook_resid_post-964.674072265625-99", 5, "resid_post", 1e-8, 99, 966.38, 0.99, 0.99, 6.7622, 6.7622, 6.9081, 99.9961, 100.00),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-Spatial_max_6-hook_resid_post-1006.57165527344-99", 6, "resid_post", 1e-8, 99, 1006.62, 0.99, 0.99, 6.7622, 6.7622, 6.9083, 100.00, 99.97),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-Spatial_max_7-hook_resid_post-984.1376953125-99", 7, "resid_post", 1e-8, 99, 984.19, 0.99, 0.99, 6.7622, 6.7622, 6.9082, 100.00, 100.00),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-Spatial_max_8-hook_resid_post-965.125-99", 8, "resid_post", 3e-8, 99, 965.12, 0.99, 1.00, 6.7622, 6.7622, 6.9087, 100.00, 92.37),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-Spatial_max_9-hook_resid_post-854.891540527344-99", 9, "resid_post", 9e-8, 99, 854.92, 0.99, 1.00, 6.7622, 6.7622, 6.9083, 99.9991, 85.43),
    ("Prisma-Multimodal/imagenet-sweep-vanilla-x64-Spatial_max_11-hook_resid_post-829.0498046875-99", 11, "resid_post", 3e-7, 99, 829.09, 0.99, 1.00, 6.7622, 6.7622, 6.9086, 100.00, 55.71),
)

# CLIP-Scope model card: layer, MSE (summed over features), explained variance, dead and active feature
# proportions, sort-eval accuracy on the CLS token (not measured for layers 2, 5 and 8).
_CLIPSCOPE_ROWS = (
    (2, 267.95, 0.763, 0.000912, 0.001, None),
    (5, 354.46, 0.665, 0, 0.0034, None),
    (8, 357.58, 0.642, 0, 0.01074, None),
    (11, 321.23, 0.674, 0, 0.0415, 0.7334),
    (14, 319.64, 0.689, 0, 0.07866, 0.7427),
    (17, 261.20, 0.731, 0, 0.1477, 0.8689),
    (20, 278.06, 0.706, 0.0000763, 0.2036, 0.9149),
    (22, 299.96, 0.684, 0, 0.1588, 0.8641),
)

# ViT-Prisma's CLIP transcoders (README table, verbatim): layer, then the table's columns % explained variance
# (of the MLP output), k, avg CLS L0, cos sim, CE, recon CE, zero-ablation CE, % CE recovered. They read
# ln2.hook_normalized and predict hook_mlp_out of the same block, on all 50 tokens, with 768 x 64 latents.
_PRISMA_TRANSCODER_ROWS = (
    (0, 96, 768, 767, 0.9655, 6.7621, 6.7684, 6.8804, 94.68),
    (1, 94, 256, 255, 0.9406, 6.7621, 6.7767, 6.8816, 87.78),
    (2, 93, 1024, 475, 0.9758, 6.7621, 6.7681, 6.7993, 83.92),
    (3, 90, 1024, 825, 0.9805, 6.7621, 6.7642, 6.7999, 94.42),
    (4, 76, 512, 29, 0.9830, 6.7621, 6.7636, 6.8080, 96.76),
    (5, 91, 1024, 1017, 0.9784, 6.7621, 6.7643, 6.8296, 96.82),
    (6, 94, 1024, 924, 0.9756, 6.7621, 6.7630, 6.8201, 98.40),
    (7, 97, 1024, 1010, 0.9629, 6.7621, 6.7631, 6.8056, 97.68),
    (8, 98, 1024, 1023, 0.9460, 6.7621, 6.7630, 6.8017, 97.70),
    (9, 98, 1024, 1023, 0.9221, 6.7621, 6.7630, 6.7875, 96.50),
    (10, 97, 1024, 1019, 0.9334, 6.7621, 6.7636, 6.7860, 93.95),
)
_TRANSCODER_METRICS = ("explained_variance_pct", "avg_cls_l0", "cos_sim", "ce", "recon_ce", "zero_abl_ce", "ce_recovered_pct")
# saev's first releases (osunlp/SAE_*_24K_*): short-name stem, repo, base model. ReLU SAEs with 32 x 768
# latents on the output of block 10 (saev's default layer, -2 of 12), patch tokens only.
_SAEV_ROWS = (
    ("clip-b16", "osunlp/SAE_CLIP_24K_ViT-B-16_IN1K", "openai/clip-vit-base-patch16"),
    ("dinov2-b14", "osunlp/SAE_DINOv2_24K_ViT-B-14_IN1K", "facebook/dinov2-base"),
    ("bioclip-b16", "osunlp/SAE_BioCLIP_24K_ViT-B-16_iNat21", "imageomics/bioclip"),
)
SAEV_24K_NOTES = (
    "trained on (x - dataset mean) / scalar with statistics saev keeps beside its activation shards, not in sae.pt; "
    "fold them in with sae.fold_input_affine(mean, scalar) to read raw activations"
)

_PRISMA_METRICS_TAIL = ("cos_sim", "recon_cos_sim", "ce", "recon_ce", "zero_abl_ce", "ce_recovered_pct", "alive_features_pct")
_CLIPSCOPE_METRICS = ("mse", "explained_variance", "dead_feature_proportion", "active_feature_proportion", "sort_eval_accuracy")

# suite, short-name stem, token set, architecture, k, d_sae, whether the table has an l1 column, metric columns.
_PRISMA_SUITES = (
    ("prisma-clip-b32-vanilla-all-patches", "all-patches", "all", "standard", None, 768 * 64, True,
     ("explained_variance_pct", "avg_l0", "avg_cls_l0", *_PRISMA_METRICS_TAIL), _ALL_PATCHES_ROWS),
    ("prisma-clip-b32-vanilla-cls", "cls", "cls", "standard", None, 768 * 64, True,
     ("explained_variance_pct", "avg_cls_l0", *_PRISMA_METRICS_TAIL), _CLS_ROWS),
    ("prisma-clip-b32-topk64-cls", "cls-topk64", "cls", "topk", 64, None, False,
     ("explained_variance_pct", "avg_cls_l0", *_PRISMA_METRICS_TAIL), _CLS_TOPK_ROWS),
    ("prisma-clip-b32-vanilla-patches", "patches", "patches", "standard", None, 768 * 64, True,
     ("explained_variance_pct", "avg_l0", *_PRISMA_METRICS_TAIL), _PATCHES_ROWS),
)


def _build_registry() -> dict[str, PretrainedSAE]:
    entries = []
    for suite, stem, tokens, architecture, k, d_sae, has_l1, metric_names, rows in _PRISMA_SUITES:
        for repo_id, layer, hook, *numbers in rows:
            l1_coefficient = numbers.pop(0) if has_l1 else None
            entries.append(
                PretrainedSAE(
                    name=f"prisma/clip-b32/{stem}/{hook}/{layer}",
                    suite=suite,
                    repo_id=repo_id,
                    layer=layer,
                    hook=hook,
                    tokens=tokens,
                    model_name=PRISMA_BASE_MODEL,
                    architecture=architecture,
                    d_in=768,
                    files=_PRISMA_FILES,
                    k=k,
                    d_sae=d_sae,
                    l1_coefficient=l1_coefficient,
                    metrics=MappingProxyType(dict(zip(metric_names, map(float, numbers), strict=True))),
                )
            )
    for layer, *numbers in _CLIPSCOPE_ROWS:
        metrics = {name: float(value) for name, value in zip(_CLIPSCOPE_METRICS, numbers, strict=True) if value is not None}
        entries.append(
            PretrainedSAE(
                name=f"clipscope/clip-l14/resid_post/{layer}",
                suite="clipscope-clip-l14-topk32",
                repo_id=CLIPSCOPE_REPO,
                layer=layer,
                hook="resid_post",
                tokens="all",
                model_name=CLIPSCOPE_BASE_MODEL,
                architecture="topk",
                d_in=1024,
                files=("*.pt",),
                subfolder=f"{layer}_resid",
                k=32,
                d_sae=65536,
                metrics=MappingProxyType(metrics),
            )
        )
    for layer, explained, k, *numbers in _PRISMA_TRANSCODER_ROWS:
        metrics = dict(zip(_TRANSCODER_METRICS, map(float, (explained, *numbers)), strict=True))
        entries.append(
            PretrainedSAE(
                name=f"prisma/clip-b32/transcoder-topk/mlp_out/{layer}",
                suite="prisma-clip-b32-transcoder-topk",
                repo_id=f"Prisma-Multimodal/CLIP-transcoder-topk-{k}-x64-all_patches_{layer}-mlp-{explained}",
                layer=layer,
                hook="ln2_normalized",
                hook_out="mlp_out",
                tokens="all",
                model_name=PRISMA_BASE_MODEL,
                architecture="topk",
                d_in=768,
                files=_PRISMA_FILES,
                k=k,
                d_sae=768 * 64,
                metrics=MappingProxyType(metrics),
            )
        )
    for stem, repo_id, model_name in _SAEV_ROWS:
        entries.append(
            PretrainedSAE(
                name=f"saev/{stem}/resid_post/10",
                suite="saev-24k",
                repo_id=repo_id,
                layer=10,
                hook="resid_post",
                tokens="patches",
                model_name=model_name,
                architecture="standard",
                d_in=768,
                files=("sae.pt",),
                filename="sae.pt",
                d_sae=768 * 32,
                notes=SAEV_24K_NOTES,
            )
        )
    return {entry.name: entry for entry in entries}


REGISTRY: Mapping[str, PretrainedSAE] = MappingProxyType(_build_registry())
_NAME_PREFIXES = tuple({name.split("/", 1)[0] + "/" for name in REGISTRY})


def all_entries() -> list[PretrainedSAE]:
    """Every registered SAE, in registry order.

    Example:
        >>> len(all_entries())
        81
    """
    return list(REGISTRY.values())


def get(name: str) -> PretrainedSAE:
    """The entry called ``name``, or a :class:`ResolutionError` suggesting the closest names.

    Example:
        >>> get("prisma/clip-b32/cls-topk64/resid_post/11").k
        64
    """
    entry = REGISTRY.get(name)
    if entry is None:
        suggestions = closest_names(name, REGISTRY)
        hint = "Did you mean " + " or ".join(map(repr, suggestions)) + "?" if suggestions else ""
        raise ResolutionError(
            f"no registered SAE is called {name!r}. {hint} List them with "
            "vit_sae_hooks.pretrained.all_entries() or query with pretrained.find(layer=..., hook=..., tokens=...)."
        )
    return entry


def lookup(name: str | os.PathLike) -> PretrainedSAE | None:
    """The entry called ``name``; None when ``name`` is not in the registry's namespace (a hub id or a path).

    Example:
        >>> lookup("Prisma-Multimodal/some-repo") is None
        True
    """
    name = os.fspath(name)
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith(_NAME_PREFIXES) and not Path(name).exists():
        return get(name)
    return None


def find(
    layer: int | None = None,
    hook: str | None = None,
    tokens: str | None = None,
    model: str | None = None,
    architecture: str | None = None,
    suite: str | None = None,
) -> list[PretrainedSAE]:
    """The entries matching every given criterion, in registry order.

    ``hook`` accepts ``"resid_post"``, ``"hook_resid_post"`` or a full name like ``"blocks.9.hook_resid_post"``
    (a transcoder matches the hook it predicts as well as the one it reads);
    ``tokens`` is ``"all"``, ``"cls"`` or ``"patches"``; ``model`` matches the base model's hub id.

    Example:
        >>> [e.name for e in find(layer=9, hook="resid_post", tokens="all")]
        ['prisma/clip-b32/all-patches/resid_post/9']
    """
    if hook is not None:
        full = split_block_hook(hook)
        if full:
            if layer is not None and layer != full[0]:
                return []
            layer, hook = full
        short = {suffix: name for name, suffix in _HOOK_SUFFIXES.items()}
        hook = short.get(hook, hook.removeprefix("hook_"))
    return [
        entry
        for entry in REGISTRY.values()
        if (layer is None or entry.layer == layer)
        and (hook is None or hook in (entry.hook, entry.hook_out))
        and (tokens is None or entry.tokens == tokens)
        and (model is None or entry.model_name == model)
        and (architecture is None or entry.architecture == architecture)
        and (suite is None or entry.suite == suite)
    ]


def resolve_location(
    name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """A local checkpoint folder or file for a path, a hub id ``owner/repo[/sub/folder]``, or a hub file path.

    A hub path ending in a weights file (``lewington/CLIP-ViT-L-scope/22_resid/1200013184.pt``) fetches that
    file and the config files beside it, not the whole folder.

    Example:
        >>> path = resolve_location("lewington/CLIP-ViT-L-scope/22_resid/1200013184.pt")
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    parts = str(name_or_path).strip("/").split("/")
    if len(parts) >= 3 and parts[-1].endswith(_TORCH_OR_SAFETENSORS):
        patterns = [parts[-1], "cfg.json", "config.json"]
        folder = resolve_local_or_hub("/".join(parts[:-1]), patterns, revision=revision, cache_dir=cache_dir)
        return folder / parts[-1]
    return resolve_local_or_hub(str(name_or_path), HUB_FILE_PATTERNS, revision=revision, cache_dir=cache_dir)
