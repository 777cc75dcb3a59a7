"""Every public function that takes a path accepts ``str`` and any ``os.PathLike``, not just ``pathlib.Path``."""

from __future__ import annotations

import os

import torch
from PIL import Image

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig, pretrained
from vit_sae_hooks.data import ImageFolder, image_loader, preprocess_for, preprocess_from_folder
from vit_sae_hooks.evals import evaluate
from vit_sae_hooks.training import TensorActivations, TrainConfig, train_sae
from vit_sae_hooks.viz import plot_heatmap, top_activating

from helpers import FIXTURES


class OtherPath(os.PathLike):
    """A path type that is neither ``str`` nor ``pathlib.Path``: only ``os.fspath`` can read it."""

    def __init__(self, path) -> None:
        self._path = os.fspath(path)

    def __fspath__(self) -> str:
        return self._path


def test_model_sae_data_evaluation_training_and_figures_take_any_path(tmp_path):
    torch.manual_seed(0)
    model = HookedViT(HookedViTConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, image_size=16, patch_size=8)).eval()
    model.save_pretrained(OtherPath(tmp_path / "model"))
    model = HookedViT.from_pretrained(OtherPath(tmp_path / "model"))
    loaded, published = SAE.load(OtherPath(FIXTURES / "saelens_topk")), SAE.from_pretrained(OtherPath(FIXTURES / "saelens_topk"))
    assert loaded.d_sae == published.d_sae
    assert pretrained.resolve_location(OtherPath(FIXTURES / "saelens_topk")).is_dir()
    small = SAE(SAEConfig(d_in=16, d_sae=32, architecture="topk", k=2, hook_name="blocks.0.hook_resid_post"))
    small.save(OtherPath(tmp_path / "sae"))
    assert SAE.load(str(tmp_path / "sae")).d_sae == 32

    folder = tmp_path / "images" / "things"
    folder.mkdir(parents=True)
    for index in range(3):
        Image.new("RGB", (20, 20), (index * 60, 10, 200)).save(folder / f"{index}.png")
    preprocess = preprocess_from_folder(OtherPath(tmp_path / "model"))
    assert preprocess_for(OtherPath(tmp_path / "model")) == preprocess
    assert len(ImageFolder(OtherPath(tmp_path / "images"), transform=preprocess)) == 3
    assert sum(len(images) for images, _ in image_loader(OtherPath(tmp_path / "images"), preprocess, batch_size=2)) == 3
    assert evaluate(model, small, OtherPath(tmp_path / "images"), downstream=False, progress=False).n_images == 3
    top = top_activating(model, small, OtherPath(tmp_path / "images"), features=[0], k=2, progress=False)
    plot_heatmap(top.images[0, 0], top.patch_maps[0, 0], path=OtherPath(tmp_path / "map.png"))
    assert (tmp_path / "map.png").stat().st_size > 0

    config = TrainConfig(k=2, d_sae=32, batch_size=8, tokens_budget=16, init_tokens=8, warmup_steps=0)
    train_sae(TensorActivations(torch.randn(64, 16)), config, out=OtherPath(tmp_path / "run"), progress=False)
    assert SAE.load(tmp_path / "run").d_sae == 32
