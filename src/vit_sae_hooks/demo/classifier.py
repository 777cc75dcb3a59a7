"""Training the small CLIP-style ViT that classifies the shapes dataset (the demo's base model)."""

from __future__ import annotations

import logging
import math

import torch
from tqdm.auto import tqdm

from vit_sae_hooks.data import shapes
from vit_sae_hooks.model import HookedViT, HookedViTConfig

logger = logging.getLogger(__name__)

SHAPES_VIT_CONFIG = dict(
    n_layers=4, d_model=64, n_heads=4, d_mlp=256, image_size=32, patch_size=8, ln_pre=True, act_fn="gelu",
    head_type="linear", d_output=len(shapes.CLASSES), model_name="vit-sae-hooks/shapes-vit",
    original_architecture="vit_sae_hooks.shapes_vit", extra={"class_names": list(shapes.CLASSES)},
)
TRAIN_SEED, TEST_SEED = 0, 1


def train_classifier(
    steps: int = 2000, batch_size: int = 128, lr: float = 2e-3, seed: int = 0, progress: bool = True
) -> HookedViT:
    """A shapes classifier trained from scratch, deterministically from ``seed`` (AdamW, warm-up then cosine).

    Example:
        >>> model = train_classifier(steps=2000)
    """
    torch.manual_seed(seed)
    model = HookedViT(HookedViTConfig(**SHAPES_VIT_CONFIG))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )
    model.train()
    bar = tqdm(shapes.batches(batch_size, steps, seed=TRAIN_SEED + seed), total=steps, disable=not progress,
               desc="training shapes ViT")
    for images, labels in bar:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def accuracy(model: HookedViT, n_images: int = 2000, seed: int = TEST_SEED, batch_size: int = 500) -> float:
    """Accuracy on ``n_images`` held-out shape images (a seed the training never uses).

    Example:
        >>> accuracy(model)
        0.99
    """
    correct = 0
    for images, labels in shapes.batches(batch_size, math.ceil(n_images / batch_size), seed=seed):
        correct += int((model(images).argmax(-1) == labels).sum())
    return correct / (batch_size * math.ceil(n_images / batch_size))
