"""Building the demo's shipped checkpoints from scratch: the shapes ViT and TopK SAEs on its residual stream
after blocks 1, 2 and 3 (the demo's experiments use block 2's; its circuit uses all three).

``python scripts/build_demo_assets.py`` (or :func:`build`) retrains them deterministically and writes them
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
from vit_sae_hooks.hook_names import stop_layer
from vit_sae_hooks.hub import ASSETS
from vit_sae_hooks.model import HookedViT
from vit_sae_hooks.sae import SAE

logger = logging.getLogger(__name__)

MODEL_NAME = "vit-sae-hooks/shapes-vit"
SAE_HOOK = "blocks.2.hook_resid_post"
SAE_NAME = f"{MODEL_NAME}/resid_post/2"
# The SAEs the demo's feature circuit runs through, in the order the model computes their hooks.
CIRCUIT_LAYERS = (1, 2, 3)
CIRCUIT_SAE_NAMES = tuple(f"{MODEL_NAME}/resid_post/{layer}" for layer in CIRCUIT_LAYERS)
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
    chunks = []
    for images, _ in shapes.batches(batch_size, max(1, n_images // batch_size), seed=seed):
        _, cache = model.run_with_cache(images, stop_at_layer=stop_layer(hook_name), names_filter=[hook_name])
        chunks.append(cache[hook_name].flatten(0, 1))
    return torch.cat(chunks)


def train_demo_sae(
    model: HookedViT, n_images: int = 8000, k: int = 8, expansion_factor: int = 8, tokens_budget: int = 2_000_000,
    progress: bool = True, hook_name: str = SAE_HOOK,
) -> SAE:
    """A TopK SAE on ``hook_name`` (default ``blocks.2.hook_resid_post``; all tokens) trained with the
    library's trainer.

    Example:
        >>> sae = train_demo_sae(model, hook_name="blocks.1.hook_resid_post")
    """
    from vit_sae_hooks.training import TensorActivations, TrainConfig, train_sae

    activations = hook_activations(model, hook_name, n_images, seed=SAE_TRAINING_SEED)
    data = TensorActivations(activations, hook_name=hook_name, token_set="all", model_name=MODEL_NAME)
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
    check_quality(quality, SAE_HOOK)
    circuit_saes = build_circuit_saes(model, progress=progress)
    model.save_pretrained(folder)
    shapes.preprocess(model.cfg.image_size[0]).save(folder)
    sae.save(folder / "resid_post" / "2")
    for layer, circuit_sae in circuit_saes.items():
        circuit_sae.save(folder / "resid_post" / str(layer))
    return BuildReport(folder=folder, **quality)


def check_quality(quality: dict[str, float], hook_name: str) -> None:
    """Raise if an SAE's held-out ``quality`` misses the demo's bars."""
    failures = [
        f"{name} {quality[name]:.3f} < {bar}"
        for name, bar in (("accuracy", MIN_ACCURACY), ("explained_variance_pct", MIN_EXPLAINED_VARIANCE),
                          ("ce_recovered_pct", MIN_CE_RECOVERED))
        if quality[name] < bar
    ]
    if failures:
        raise ConfigError(f"the rebuilt demo SAE at {hook_name} misses the quality bars: {', '.join(failures)}")


def build_circuit_saes(model: HookedViT, progress: bool = True) -> dict[int, SAE]:
    """The SAEs at the circuit's other layers (``CIRCUIT_LAYERS`` except 2), trained and checked like block 2's.

    Example:
        >>> saes = build_circuit_saes(HookedViT.from_pretrained(MODEL_NAME))  # {1: SAE, 3: SAE}
    """
    saes = {}
    for layer in CIRCUIT_LAYERS:
        hook_name = f"blocks.{layer}.hook_resid_post"
        if hook_name == SAE_HOOK:
            continue
        saes[layer] = train_demo_sae(model, progress=progress, hook_name=hook_name)
        check_quality(held_out_quality(model, saes[layer]), hook_name)
    return saes
