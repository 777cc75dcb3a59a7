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


def randomise_defaults(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace every parameter value a fresh model shares with many others: norm weights (1) and biases (0),
    layer scales (a constant), zero-initialised tokens, position and time embeddings, and zero biases.

    Those defaults hide conversion mistakes (a swapped weight and bias, a missing layer scale). Linear and
    convolution weights keep their random initialisation, so activations stay of moderate size.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            norm = "norm" in type(module).__name__.lower()
            for name, param in module.named_parameters(recurse=False):
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float32).to(param.dtype)
                if norm and name == "weight":
                    param.copy_(1 + 0.5 * noise)
                elif name in ("lambda1", "gamma"):
                    param.copy_(0.5 + noise.abs() * 0.5)
                elif name == "bias" or bool((param == 0).all()) or bool((param == param.flatten()[0]).all()):
                    param.copy_(0.3 * noise)
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


def assert_every_hook_fires_once_and_matters(model, inputs, **forward_kwargs) -> None:
    """Run ``model`` on ``inputs``: every hook in its ``hook_dict`` fires exactly once, and adding noise at any
    one of them changes the output."""
    names = sorted(model.hook_dict)
    fired = dict.fromkeys(names, 0)

    def count(activation, hook):
        fired[hook.name] += 1

    with torch.no_grad():
        clean = model.run_with_hooks(inputs, fwd_hooks=[(name, count) for name in names], **forward_kwargs)
    assert all(times == 1 for times in fired.values()), {name: times for name, times in fired.items() if times != 1}

    def nudge(activation, hook):
        noise = torch.randn(activation.shape, generator=torch.Generator().manual_seed(1)).to(activation.dtype)
        # Large enough to move even a near-uniform attention pattern of a tiny random model.
        return activation + noise * (activation.abs().mean() + 1)

    for name in names:
        with torch.no_grad():
            edited = model.run_with_hooks(inputs, fwd_hooks=[(name, nudge)], **forward_kwargs)
        assert not torch.equal(edited, clean), f"editing {name} did not change the output"
