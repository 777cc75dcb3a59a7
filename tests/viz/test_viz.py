"""Feature visualisation: top-activating images against a brute-force pass over the whole dataset, heatmaps
against the SAE's own activations (float64), every token set, registers and no-CLS models, figures as PNGs,
bad inputs, and the examples of docs/visualisation.md."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.data import CLIP_MEAN, CLIP_STD, Preprocess
from vit_sae_hooks.errors import ConfigError, DataError, InputShapeError, VitSaeHooksError
from vit_sae_hooks.viz import (
    displayable_image,
    feature_heatmap,
    plot_feature_card,
    plot_heatmap,
    plot_top_images,
    top_activating,
)

from helpers import DOCS, SAE_READING_CASES

BASE = dict(n_layers=2, d_model=32, n_heads=4, d_mlp=64, image_size=16, patch_size=4)
MODELS = {
    "cls": HookedViTConfig(**BASE),
    "registers": HookedViTConfig(**BASE, n_register_tokens=2),
    "siglip": HookedViTConfig(**BASE, has_cls_token=False, pool_type="mean"),
}
GRID = (4, 4)
N_IMAGES = 23
FEATURES = [0, 5, 17, 40]


def _model(kind: str = "cls") -> HookedViT:
    torch.manual_seed(0)
    return HookedViT(MODELS[kind]).double().eval()


def _sae(token_set: str = "all", hook: str = "blocks.0.hook_resid_post", architecture: str = "topk", **extra) -> SAE:
    torch.manual_seed(1)
    settings = dict(k=6) if architecture == "topk" else {}
    sae = SAE(SAEConfig(d_in=32, d_sae=48, architecture=architecture, hook_name=hook, token_set=token_set,
                        dtype="float64", normalize_activations="layer_norm", **settings, **extra))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
    return sae.eval()


def _dataset() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(N_IMAGES, 3, 16, 16, generator=generator, dtype=torch.float64)
    return images, torch.randint(0, 5, (N_IMAGES,), generator=generator)


def _reference(model: HookedViT, sae: SAE, images: torch.Tensor, features: list[int]):
    """Every image's activations of ``features`` on the SAE's tokens, from the clean cache and sae.encode."""
    _, cache = model.run_with_cache(images, names_filter=[sae.hook_name])
    x = cache[sae.hook_name]
    x = x.flatten(-2) if x.ndim == 4 else x
    if x.ndim == 2:  # no token axis
        return sae.encode(x)[:, None, features], None
    n_prefix, n_pos = model.cfg.n_prefix_tokens, x.shape[1]
    positions = {"all": torch.arange(n_pos), "cls": torch.tensor([0]),
                 "patches": torch.arange(n_prefix, n_pos)}[sae.token_set]
    return sae.encode(x[:, positions])[..., features], positions


def _reference_maps(acts, positions, n_prefix):
    if positions is None or not (positions >= n_prefix).any():
        return None
    patches = acts[:, positions >= n_prefix]  # [n, n_patches, features], in patch order
    return patches.transpose(1, 2).unflatten(-1, GRID)


CASES = SAE_READING_CASES


@pytest.mark.parametrize(
    "kind, token_set, hook, architecture, reduce",
    [(*case, "max") for case in CASES] + [(*CASES[1], "mean"), (*CASES[3], "mean"), (*CASES[4], "mean")],
)
def test_top_activating_equals_a_brute_force_pass_over_the_whole_dataset(kind, token_set, hook, architecture, reduce):
    model, sae = _model(kind), _sae(token_set, hook, architecture)
    images, labels = _dataset()
    k = 5
    loader = DataLoader(TensorDataset(images, labels), batch_size=9)  # 23 images: batches of 9, 9, 5
    top = top_activating(model, sae, loader, FEATURES, k=k, reduce=reduce, progress=False)

    acts, positions = _reference(model, sae, images, FEATURES)
    scores = acts.amax(1) if reduce == "max" else acts.mean(1)
    maps = _reference_maps(acts, positions, model.cfg.n_prefix_tokens)
    assert top.n_images == N_IMAGES and top.features.tolist() == FEATURES
    for row in range(len(FEATURES)):
        expected = torch.sort(scores[:, row], descending=True, stable=True).indices[:k]
        assert top.image_indices[row].tolist() == expected.tolist()
        torch.testing.assert_close(top.scores[row], scores[expected, row], rtol=1e-12, atol=1e-12)
        assert torch.equal(top.images[row], images[expected])
        assert torch.equal(top.labels[row], labels[expected])
        if maps is None:
            assert top.patch_maps is None
        else:
            torch.testing.assert_close(top.patch_maps[row], maps[expected, row], rtol=1e-12, atol=1e-12)
    assert not model.acts_to_saes


@pytest.mark.parametrize("kind, token_set, hook, architecture", CASES)
def test_heatmap_is_the_sae_activations_on_the_patch_grid(kind, token_set, hook, architecture):
    model, sae = _model(kind), _sae(token_set, hook, architecture)
    images, _ = _dataset()
    feature = 5
    acts, positions = _reference(model, sae, images[3:4], [feature])
    heatmap = feature_heatmap(model, sae, images[3], feature)
    assert heatmap.dtype == torch.float64
    maps = _reference_maps(acts, positions, model.cfg.n_prefix_tokens)
    if maps is None:  # CLS-only SAE or a hook without tokens: one number
        assert heatmap.shape == ()
        torch.testing.assert_close(heatmap, acts[0, 0, 0], rtol=1e-12, atol=1e-12)
    else:
        assert heatmap.shape == GRID
        torch.testing.assert_close(heatmap, maps[0, 0], rtol=1e-12, atol=1e-12)


def test_heatmap_leaves_out_cls_and_registers():
    model, sae = _model("registers"), _sae("all")
    images, _ = _dataset()
    _, cache = model.run_with_cache(images[:1], names_filter=[sae.hook_name])
    patches = cache[sae.hook_name][0, model.cfg.n_prefix_tokens :]  # skips CLS and the 2 registers
    expected = sae.encode(patches)[:, 7].reshape(GRID)
    torch.testing.assert_close(feature_heatmap(model, sae, images[0], 7), expected, rtol=1e-12, atol=1e-12)


def test_any_iterable_of_batches_and_fewer_images_than_k(capsys):
    model, sae = _model(), _sae()
    images, labels = _dataset()
    from_tensor = top_activating(model, sae, images, [3], k=4, labels=labels, batch_size=5)
    from_pairs = top_activating(model, sae, [(images[:9], labels[:9]), (images[9:], labels[9:])], [3], k=4)
    from_images = top_activating(model, sae, (images[i : i + 4] for i in range(0, N_IMAGES, 4)), [3], k=4)
    assert from_tensor.image_indices.tolist() == from_pairs.image_indices.tolist() == from_images.image_indices.tolist()
    assert from_images.labels is None
    assert "top images blocks.0.hook_resid_post" in capsys.readouterr().err
    few = top_activating(model, sae, images[:3], [3, 4], k=10, progress=False)
    assert few.scores.shape == (2, 3) and sorted(few.image_indices[0].tolist()) == [0, 1, 2]
    limited = top_activating(model, sae, images, [3], k=30, limit=11, batch_size=4, progress=False)
    assert limited.n_images == 11 and limited.image_indices.max() == 10
    without_images = top_activating(model, sae, images, [3], k=2, keep_images=False, progress=False)
    assert without_images.images is None and without_images.image_indices.tolist() == from_tensor.image_indices[:, :2].tolist()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("token_set", ["all", "cls"])
def test_figures_write_pngs_of_the_figure_size(tmp_path, token_set):
    model, sae = _model(), _sae(token_set)
    images, labels = _dataset()
    top = top_activating(model, sae, images, [5, 17], k=6, labels=labels, progress=False)
    unnormalize = (CLIP_MEAN, CLIP_STD)
    figures = {
        "top.png": plot_top_images(top, 17, unnormalize, path=tmp_path / "top.png", dpi=80),
        "card.png": plot_feature_card(top, 17, unnormalize, class_names=list("abcde"), path=tmp_path / "card.png",
                                      dpi=80),
        "heatmap.png": plot_heatmap(images[0], feature_heatmap(model, sae, images[0], 17), unnormalize,
                                    title="feature 17", path=tmp_path / "heatmap.png", dpi=80),
    }
    for name, figure in figures.items():
        width, height = figure.get_size_inches() * 80
        assert _png_size(tmp_path / name) == (int(width), int(height))  # matplotlib rounds down
    unlabelled = top_activating(model, sae, images, [5], k=3, progress=False)
    plot_feature_card(unlabelled, 5, path=tmp_path / "unlabelled.png")
    assert _png_size(tmp_path / "unlabelled.png")[0] > 100


def test_displayable_image_undoes_the_preprocessing():
    pixels = torch.rand(3, 8, 8, dtype=torch.float64)
    preprocess = Preprocess(8)
    normalised = (pixels - torch.tensor(preprocess.mean).view(3, 1, 1)) / torch.tensor(preprocess.std).view(3, 1, 1)
    for unnormalize in (preprocess, (preprocess.mean, preprocess.std)):
        torch.testing.assert_close(torch.from_numpy(displayable_image(normalised, unnormalize)), pixels.permute(1, 2, 0))
    stretched = displayable_image(normalised)
    assert stretched.min() == 0 and stretched.max() == 1


def _raises(error: type[VitSaeHooksError], match: str, function, *args, **kwargs) -> None:
    with pytest.raises(error, match=match):
        function(*args, **kwargs)


def test_bad_inputs_raise_library_errors_that_say_what_to_do(tmp_path):
    model, sae = _model(), _sae()
    images, labels = _dataset()
    run = dict(progress=False)
    _raises(ConfigError, r"feature 48 is out of range .* d_sae=48 .* 0-47", top_activating, model, sae, images, [1, 48], **run)
    _raises(ConfigError, "feature -1 is out of range", feature_heatmap, model, sae, images[0], -1)
    _raises(ConfigError, "integer feature indices", top_activating, model, sae, images, [1.5], **run)
    _raises(ConfigError, "repeat an index", top_activating, model, sae, images, [2, 2], **run)
    for k in (0, -3, 2.5):
        _raises(ConfigError, f"k must be a positive integer, got {k}", top_activating, model, sae, images, [1], k=k, **run)
    _raises(ConfigError, "reduce='sum' is not 'max' or 'mean'", top_activating, model, sae, images, [1], reduce="sum", **run)
    _raises(InputShapeError, r"one image \[channels, height, width\].*images\[0\]", feature_heatmap, model, sae, images, 1)
    _raises(InputShapeError, "12x16 but the model expects 16x16", feature_heatmap, model, sae, images[0, :, :12], 1)
    _raises(InputShapeError, "1 channels but the model expects 3", top_activating, model, sae, images[:, :1], [1], **run)
    _raises(DataError, "yielded no images", top_activating, model, sae, [], [1], **run)
    _raises(DataError, "yielded no images", top_activating, model, sae, images[:0], [1], **run)
    _raises(DataError, "labels with every batch or with none", top_activating, model, sae,
            [(images[:4], labels[:4]), images[4:8]], [1], **run)
    _raises(InputShapeError, "must have the same size", top_activating, model, sae,
            [images[:4], torch.zeros(2, 3, 8, 8, dtype=torch.float64)], [1], **run)
    top = top_activating(model, sae, images, [1], k=2, **run)
    _raises(ConfigError, r"feature 9 was not collected \(collected: \[1\]\)", plot_feature_card, top, 9)
    _raises(ConfigError, "unnormalize=.* pass preprocess_for", plot_top_images, top, 1, unnormalize="clip")
    _raises(ConfigError, "kept no images", plot_top_images,
            top_activating(model, sae, images, [1], k=2, keep_images=False, **run), 1)
    _raises(InputShapeError, r"heatmap must be \[grid_h, grid_w\]", plot_heatmap, images[0], torch.zeros(16))
    model.add_sae(sae)
    _raises(ConfigError, "already has an SAE attached; call model.reset_saes", top_activating, model, sae, images, [1], **run)
    model.reset_saes()
    assert not model.acts_to_saes


DOC = DOCS / "visualisation.md"


def test_the_documented_examples_run(tmp_path, monkeypatch):
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL) if not b.startswith("# setup")]
    assert len(blocks) == 4
    monkeypatch.chdir(tmp_path)
    model, sae = _model(), _sae()
    images, labels = _dataset()
    namespace = dict(model=model, sae=sae, images=images, preprocess=Preprocess(16),
                     loader=DataLoader(TensorDataset(images, labels), batch_size=8))
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feature_17_card.png", "feature_17_heatmap.png",
                                                         "feature_17_top.png", "feature_site"]
    assert (tmp_path / "feature_site" / "index.html").is_file() and namespace["site"].n_features == 3
