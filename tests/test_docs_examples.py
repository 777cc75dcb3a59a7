"""Every example in docs/experiments.md runs, on tiny random stand-ins for the real checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.experiments import ablate_features, circuits, patching, set_features, steer

DOC = Path(__file__).parent.parent / "docs" / "experiments.md"
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL) if not b.startswith("# setup")]


def _namespace() -> dict:
    torch.manual_seed(0)
    model = HookedViT(HookedViTConfig(n_layers=3, d_model=32, n_heads=4, d_mlp=64, image_size=12, patch_size=4,
                                      ln_pre=True, head_type="linear", d_output=16)).eval()
    sae = SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=8, hook_name="blocks.1.hook_resid_post"))
    saes = [SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=8, hook_name=f"blocks.{layer}.hook_resid_post"))
            for layer in range(3)]
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 12, 12, generator=generator)
    names = dict(torch=torch, model=model, sae=sae, images=images, labels=torch.tensor([0, 1, 2, 1]),
                 head=torch.randn(16, 3, generator=generator), clean_images=images[:2],
                 corrupted_images=torch.randn(2, 3, 12, 12, generator=generator), patching=patching,
                 ablate_features=ablate_features, set_features=set_features, steer=steer, saes=saes,
                 circuits=circuits)
    return names


def test_there_is_an_example_for_each_documented_experiment():
    assert len(BLOCKS) == 7


def test_examples_run_in_order(capsys):
    namespace = _namespace()
    for block in BLOCKS:
        assert len([line for line in block.strip().splitlines() if line.strip()]) <= 10
        exec(compile(block, str(DOC), "exec"), namespace)
    printed = capsys.readouterr().out
    for expected in ("CE clean", "logit change per image", "of predictions changed", "most important (layer, token)",
                     "feature", ")]", "-> metric", "faithfulness"):
        assert expected in printed
    assert not namespace["model"].acts_to_saes


@pytest.mark.parametrize("index", range(7))
def test_each_example_leaves_the_model_clean(index):
    namespace = _namespace()
    for block in BLOCKS[: index + 1]:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert not namespace["model"].acts_to_saes
