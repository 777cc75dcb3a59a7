"""Building the demo's shipped checkpoints from scratch: the shapes ViT and a TopK SAE on its residual stream.

``python scripts/build_demo_assets.py`` (or :func:`build`) retrains both deterministically and writes them
to ``src/vit_sae_hooks/assets/shapes-vit/``, checking the quality bars the demo relies on.

Example:
    >>> report = build()  # ~10 minutes on 2 CPU cores
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vit_sae_hooks.data import shapes
from vit_sae_hooks.demo.classifier import TEST_SEED, accuracy, train_classifier
from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.hub import ASSETS
from vit_sae_hooks.model import HookedViT
from vit_sae_hooks.sae import SAE

logger = logging.getLogger(__name__)

MODEL_NAME = "vit-sae-hooks/shapes-vit"
SAE_HOOK = "blocks.2.hook_resid_post"
SAE_NAME = f"{MODEL_NAME}/resid_post/2"
SAE_TRAINING_SEED = 2
MIN_ACCURACY, MIN_EXPLAINED_VARIANCE, MIN_CE_RECOVERED = 0.95, 85.0, 90.0


@dataclass
class BuildReport:
    """What :func:`build` produced and how good it is on held-out images."""

    accuracy: float
    explained_variance_pct: float
    ce_recovered_pct: float
    l0: float
    folder: Path


@torch.no_grad()
def hook_activations(model: HookedViT, hook_name: str, n_images: int, seed: int, batch_size: int = 500) -> torch.Tensor:
    """Every token's activation at ``hook_name`` on ``n_images`` generated shape images, ``[tokens, d_model]``."""
    layer = int(hook_name.split(".")[1])
    chunks = []
    for images, _ in shapes.batches(batch_size, max(1, n_images // batch_size), seed=seed):
        _, cache = model.run_with_cache(images, stop_at_layer=layer + 1, names_filter=[hook_name])
        chunks.append(cache[hook_name].flatten(0, 1))
    return torch.cat(chunks)


def train_demo_sae(
    model: HookedViT, n_images: int = 8000, k: int = 8, expansion_factor: int = 8, tokens_budget: int = 2_000_000,
    progress: bool = True,
) -> SAE:
    """A TopK SAE on ``blocks.2.hook_resid_post`` (all tokens) trained with the library's trainer.

    Example:
        >>> sae = train_demo_sae(model)
    """
    from vit_sae_hooks.training import TensorActivations, TrainConfig, train_sae

    activations = hook_activations(model, SAE_HOOK, n_images, seed=SAE_TRAINING_SEED)
    data = TensorActivations(activations, hook_name=SAE_HOOK, token_set="all", model_name=MODEL_NAME)
    config = TrainConfig(
        architecture="topk", k=k, expansion_factor=expansion_factor, batch_size=1024, tokens_budget=tokens_budget,
        warmup_steps=50, checkpoint_every=10**9, seed=0, autocast=False,
    )
    return train_sae(data, config, progress=progress)


def held_out_quality(model: HookedViT, sae: SAE, n_images: int = 1000) -> dict[str, float]:
    """Accuracy and the SAE's explained variance, CE recovered and L0 on held-out shape images."""
    from vit_sae_hooks.evals import evaluate

    batch = shapes.make_batch(n_images, seed=TEST_SEED)
    result = evaluate(model, sae, batch.images, labels=batch.labels, head="model", batch_size=250, progress=False)
    return {
        "accuracy": accuracy(model),
        "explained_variance_pct": float(result.explained_variance_pct),
        "ce_recovered_pct": float(result.ce_recovered_pct),
        "l0": float(result.avg_l0),
    }


def build(folder: str | os.PathLike = ASSETS / "shapes-vit", classifier_steps: int = 2000, progress: bool = True) -> BuildReport:
    """Train the shapes ViT and its SAE from scratch, check the quality bars, and save both under ``folder``
    (the model with its preprocessing, so that image folders are read as the model was trained)."""
    folder = Path(folder)
    model = train_classifier(steps=classifier_steps, progress=progress)
    sae = train_demo_sae(model, progress=progress)
    quality = held_out_quality(model, sae)
    failures = [
        f"{name} {quality[name]:.3f} < {bar}"
        for name, bar in (("accuracy", MIN_ACCURACY), ("explained_variance_pct", MIN_EXPLAINED_VARIANCE),
                          ("ce_recovered_pct", MIN_CE_RECOVERED))
        if quality[name] < bar
    ]
    if failures:
        raise ConfigError(f"the rebuilt demo checkpoints miss the quality bars: {', '.join(failures)}")
    model.save_pretrained(folder)
    shapes.preprocess(model.cfg.image_size[0]).save(folder)
    sae.save(folder / "resid_post" / "2")
    return BuildReport(folder=folder, **quality)
