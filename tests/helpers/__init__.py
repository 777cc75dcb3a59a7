"""Helpers shared by the test suite: where fixtures live, tiny-model tweaks, fake hub caches.

Importable as ``helpers`` from any test (``tests/`` is on ``sys.path`` through its conftest).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
DOCS = ROOT / "docs"

# (model kind, token set, hook, architecture): every way an SAE's rows map to a model's tokens, for the tests
# of what is read at an SAE's hook (CLS, registers, no CLS, a head-split hook, a hook without tokens).
SAE_READING_CASES = [
    ("cls", "all", "blocks.0.hook_resid_post", "topk"),
    ("cls", "cls", "blocks.1.hook_resid_post", "topk"),
    ("cls", "patches", "blocks.0.hook_resid_post", "standard"),
    ("registers", "all", "blocks.1.hook_resid_post", "topk"),
    ("registers", "patches", "blocks.0.attn.hook_z", "jumprelu"),
    ("siglip", "all", "blocks.0.hook_resid_post", "topk"),
    ("cls", "all", "hook_pooled", "standard"),
]


def randomise_layer_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every LayerNorm random weights and biases: the defaults (1, 0) hide conversion mistakes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=generator))
            for name, param in module.named_parameters(recurse=False):
                # Layer-scale vectors default to a constant; randomise them too.
                if name == "lambda1" or name == "gamma":
                    param.copy_(0.5 + torch.rand(param.shape, generator=generator))
    return model


def make_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """A Hugging Face cache holding ``files`` (relative path -> source) for ``repo_id``, laid out as huggingface_hub does."""
    repo_folder = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo_folder / "refs").mkdir(parents=True)
    (repo_folder / "refs" / "main").write_text(commit)
    for relative, source in files.items():
        target = repo_folder / "snapshots" / commit / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
