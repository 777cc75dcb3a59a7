"""The feature browser's data: what build_site writes against independent references (viz.top_activating, a
brute-force pass over every activation, the full decoder cosine matrix, zero-shot logits through the head),
for every token set, registers and no-CLS models; bad inputs; atomic rebuilds; `vit-sae browse`; scale."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.cli import main
from vit_sae_hooks.errors import ConfigError, DataError, HookNameError
from vit_sae_hooks.viz import build_site, top_activating
from vit_sae_hooks.viz.site import files

from helpers import SAE_READING_CASES
from helpers.site import read_data

BASE = dict(n_layers=2, d_model=32, n_heads=4, d_mlp=64, image_size=16, patch_size=4)
MODELS = {
    "cls": HookedViTConfig(**BASE),
    "registers": HookedViTConfig(**BASE, n_register_tokens=2),
    "siglip": HookedViTConfig(**BASE, has_cls_token=False, pool_type="mean"),
}
N_IMAGES, D_SAE, TOP, PER_TOKEN, SIMILAR = 23, 48, 5, 4, 3
CLASSES = ["ant", "bee", "cat", "dog", "eel"]
CASES = SAE_READING_CASES


def _model(kind: str = "cls") -> HookedViT:
    torch.manual_seed(0)
    return HookedViT(MODELS[kind]).eval()


def _sae(token_set: str = "all", hook: str = "blocks.0.hook_resid_post", architecture: str = "topk", d_sae: int = D_SAE,
         k: int = 6) -> SAE:
    torch.manual_seed(1)
    settings = dict(k=k) if architecture == "topk" else {}
    sae = SAE(SAEConfig(d_in=32, d_sae=d_sae, architecture=architecture, hook_name=hook, token_set=token_set,
                        normalize_activations="layer_norm", **settings))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
    return sae.eval()


def _dataset(n: int = N_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(n, 3, 16, 16, generator=generator), torch.randint(0, len(CLASSES), (n,), generator=generator)


def read_site(site: Path) -> dict:
    """Every data file of a site: meta, summary, each feature's record by id and each image's record by index."""
    meta = read_data(site, "meta")
    features, images, referenced = {}, [], {}
    for path in sorted((site / "data" / "features").glob("*.js")):
        shard = read_data(site, f"features/{path.stem}")
        features.update({record["id"]: record for record in shard["features"]})
        referenced.update({int(index): tuple(value) for index, value in shard["images"].items()})
    for path in sorted((site / "data" / "images").glob("*.js")):
        shard = read_data(site, f"images/{path.stem}")
        assert shard["first"] == len(images)
        images += shard["images"]
    return dict(meta=meta, summary=read_data(site, "summary"), features=features, images=images, referenced=referenced)


def _reference(model: HookedViT, sae: SAE, images: torch.Tensor):
    """Every feature's activation on every token the SAE reads ([images, rows, d_sae]) and each row's position."""
    _, cache = model.run_with_cache(images, names_filter=[sae.hook_name])
    x = cache[sae.hook_name]
    x = x.flatten(-2) if x.ndim == 4 else x
    if x.ndim == 2:  # no token axis
        return sae.encode(x)[:, None].detach(), None
    n_prefix, n_pos = model.cfg.n_prefix_tokens, x.shape[1]
    positions = {"all": torch.arange(n_pos), "cls": torch.tensor([0]), "patches": torch.arange(n_prefix, n_pos)}[sae.token_set]
    return sae.encode(x[:, positions]).detach(), positions


def _close(value: float, expected: float, digits: int = 4) -> bool:
    """``value`` is ``expected`` written with ``digits`` significant digits."""
    return math.isclose(value, expected, rel_tol=10 ** (1 - digits), abs_tol=1e-12)


@pytest.mark.parametrize("kind, token_set, hook, architecture", CASES)
def test_site_data_equals_top_activating_and_brute_force_counts(tmp_path, kind, token_set, hook, architecture):
    model, sae = _model(kind), _sae(token_set, hook, architecture)
    images, labels = _dataset()
    site = build_site(model, sae, images, tmp_path / "site", top=TOP, labels=labels, class_names=CLASSES, batch_size=9,
                      per_token=PER_TOKEN, similar=SIMILAR, progress=False)
    data = read_site(site.folder)
    acts, positions = _reference(model, sae, images)
    fired = acts > 0
    assert site.n_images == N_IMAGES and site.n_features == D_SAE
    assert site.n_dead == data["meta"]["n_dead"] == int((~fired.any(0).any(0)).sum())

    summary = data["summary"]
    image_frequency = fired.any(1).double().mean(0)
    token_frequency = fired.double().mean((0, 1))
    max_activation = acts.amax((0, 1)).clamp_min(0)
    for feature in range(D_SAE):
        assert _close(summary["image_frequency"][feature], image_frequency[feature].item())
        assert _close(summary["token_frequency"][feature], token_frequency[feature].item())
        assert _close(summary["max"][feature], max_activation[feature].item())

    top = top_activating(model, sae, images, list(range(D_SAE)), k=TOP, labels=labels, progress=False)
    kinds = data["meta"]["rows"]["kinds"]
    n_prefix = model.cfg.n_prefix_tokens
    edges = 2.0 ** (torch.arange(1, 128) / 4 - 16)  # inner edges of the quarter-octave bins from 2**-16
    decoder = torch.nn.functional.normalize(sae.W_dec.detach(), dim=-1)
    cosines = decoder @ decoder.T
    cosines.fill_diagonal_(-2)
    for feature, record in data["features"].items():
        # Top images: the positive entries of viz.top_activating, in its order (ties to the earlier image).
        positive = top.scores[feature] > 0
        assert record["images"] == top.image_indices[feature][positive].tolist()
        expected_scores = top.scores[feature][positive].tolist()
        assert all(_close(score, expected) for score, expected in zip(record["scores"], expected_scores, strict=True))
        if top.patch_maps is None:
            assert record["maps"] == []
        else:
            for slot, code in enumerate(record["maps"]):
                levels = torch.tensor([files.MAP_ALPHABET.index(c) for c in code], dtype=torch.float32)
                score = top.scores[feature, slot]
                torch.testing.assert_close(levels / 63 * score, top.patch_maps[feature, slot].flatten(),
                                           atol=score.item() / 126 + 1e-6, rtol=0)
        # Activation histogram: every positive activation in its bin, counted by bucketize.
        values = acts[..., feature][fired[..., feature]]
        counts = torch.bincount(torch.bucketize(values, edges, right=True), minlength=128)
        if record["histogram"] is None:
            assert values.numel() == 0
        else:
            first, kept = record["histogram"]
            assert counts.nonzero().min() == first and counts[first : first + len(kept)].tolist() == kept
            assert counts.sum() == sum(kept)
        # CLS versus patches: fires and activation per token kind.
        for kind_name, (fires, total) in record["kinds"].items():
            rows = torch.tensor([kind == kind_name for kind in kinds])
            assert fires == int(fired[:, rows, feature].sum())
            assert _close(total, acts[:, rows, feature].clamp_min(0).sum().item())
        # Similar decoder directions: the full cosine matrix, best first.
        assert [neighbour for neighbour, _ in record["similar"]] == cosines[feature].topk(SIMILAR).indices.tolist()
        # Label: the most common class among the top images (ties: the class seen first).
        top_labels = [labels[image].item() for image in record["images"]]
        if top_labels:
            counts = {label: top_labels.count(label) for label in top_labels}
            assert record["label"] == CLASSES[max(counts, key=counts.get)]
        for image in record["images"]:
            assert data["referenced"][image] == (f"image {image}", labels[image].item())
    assert set(data["features"]) == set(range(D_SAE))

    # Image view: per token, the strongest features first (at most PER_TOKEN), each with its activation.
    assert len(data["images"]) == N_IMAGES
    for index, record in enumerate(data["images"]):
        assert record["label"] == labels[index].item() and record["name"] == f"image {index}"
        assert len(record["tokens"]) == acts.shape[1]
        for row, pairs in enumerate(record["tokens"]):
            values, order = acts[index, row].sort(descending=True, stable=True)
            expected = order[values > 0][:PER_TOKEN]
            assert pairs[::2] == expected.tolist()
            assert all(_close(v, e, 3) for v, e in zip(pairs[1::2], acts[index, row, expected].tolist(), strict=True))
    meta = data["meta"]
    if positions is not None:
        assert meta["rows"]["positions"] == positions.tolist()
        assert meta["rows"]["patches"] == [p - n_prefix if p >= n_prefix else -1 for p in positions.tolist()]
    assert meta["grid"] == ([4, 4] if top.patch_maps is not None else None)
    assert meta["classes"] == CLASSES and meta["n_images"] == N_IMAGES and meta["features"] is None
    thumbs = sorted(int(path.stem) for path in (site.folder / "thumbs").glob("*.png"))
    assert thumbs == list(range(N_IMAGES))


def test_thumbnails_are_the_model_inputs_undone(tmp_path):
    model, sae = _model(), _sae()
    pixels = torch.rand(4, 3, 16, 16)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    images = (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    site = build_site(model, sae, images, tmp_path / "site", unnormalize=(mean, std), progress=False, similar=0)
    from PIL import Image

    for index in range(4):
        written = np.asarray(Image.open(site.folder / "thumbs" / f"{index}.png"), dtype=np.float64) / 255
        np.testing.assert_allclose(written, pixels[index].permute(1, 2, 0).numpy(), atol=0.5 / 255 + 1e-6)


def test_a_chosen_subset_of_features(tmp_path):
    model, sae = _model(), _sae()
    images, _ = _dataset()
    chosen = [40, 3, 17, 9]
    site = build_site(model, sae, images, tmp_path / "ids", features=chosen, top=3, per_token=50, similar=2, progress=False)
    data = read_site(site.folder)
    assert data["meta"]["features"] == sorted(chosen) and site.n_features == 4
    assert sorted(data["features"]) == sorted(chosen)
    for record in data["images"]:
        for pairs in record["tokens"]:
            assert set(pairs[::2]) <= set(chosen)
    for feature in chosen:
        assert {n for n, _ in data["features"][feature]["similar"]} <= set(chosen) - {feature}
    top = top_activating(model, sae, images, sorted(chosen), k=3, progress=False)
    for feature in chosen:
        positive = top.scores[top.row(feature)] > 0
        assert data["features"][feature]["images"] == top.image_indices[top.row(feature)][positive].tolist()
    first = build_site(model, sae, images, tmp_path / "first", features=5, similar=0, progress=False)
    assert read_data(first.folder, "meta")["features"] is None and first.n_features == 5
    assert len(read_data(first.folder, "summary")["max"]) == 5


def test_image_folder_names_classes_and_limit(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for index in range(4):
            Image.fromarray(rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(root / name / f"{name}{index}.png")
    model, sae = _model(), _sae()
    site = build_site(model, sae, root, tmp_path / "site", limit=6, num_workers=0, similar=0, progress=False)
    data = read_site(site.folder)
    # ImageFolder order: round-robin over the classes.
    assert [record["name"] for record in data["images"]] == ["cat/cat0.png", "dog/dog0.png", "cat/cat1.png",
                                                               "dog/dog1.png", "cat/cat2.png", "dog/dog2.png"]
    assert [record["label"] for record in data["images"]] == [0, 1, 0, 1, 0, 1]
    assert data["meta"]["classes"] == ["cat", "dog"] and site.n_images == 6


def test_text_labels_rank_as_the_zero_shot_head_does(tmp_path, capsys):
    """The best labels of a feature are those whose zero-shot logit (through the head) is highest on average over
    the images it fires on, weighted by its activation, relative to the mean over all images."""
    from vit_sae_hooks.evals import build_zero_shot_head

    from helpers.clip import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    model = HookedViT.from_pretrained(clip).eval()
    torch.manual_seed(3)
    sae = SAE(SAEConfig(d_in=32, d_sae=24, architecture="topk", k=4, hook_name="blocks.1.hook_resid_post")).eval()
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    texts = ["a cat", "a dog", "an eel", "a red car", "blue sky", "tree"]
    site = build_site(model, sae, images, tmp_path / "site", text_labels=texts, templates=["{}"], batch_size=5,
                      similar=0, progress=False)
    data = read_site(site.folder)
    assert data["meta"]["text_labels"] == texts
    head = build_zero_shot_head(clip, texts, templates=["{}"], progress=False)
    with torch.no_grad():
        logits = head(model(images)).double()
    acts, _ = _reference(model, sae, images)
    weights = acts.amax(1).clamp_min(0).double()  # each image's score per feature
    for feature, record in data["features"].items():
        if weights[:, feature].sum() == 0:
            assert record["text_labels"] == [] and record["label"] == ""
            continue
        reference = weights[:, feature] @ logits / weights[:, feature].sum() - logits.mean(0)
        best = reference.topk(5)
        assert [label for label, _ in record["text_labels"]] == [texts[i] for i in best.indices.tolist()]
        assert all(_close(s, e) for (_, s), e in zip(record["text_labels"], best.values.tolist(), strict=True))
        assert record["label"] == texts[best.indices[0]]
    with pytest.raises(ConfigError, match="reads 16-wide embeddings but the model outputs 32"):
        build_site(_model(), _sae(), images[:, :, :16, :16], tmp_path / "other", text_labels=head, progress=False)

    # The same through `vit-sae browse --labels` (the "name" templates are the bare label).
    from PIL import Image

    (tmp_path / "images").mkdir()
    for index, image in enumerate((images[:4].clamp(-2, 2) + 2) / 4):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / "images" / f"{index}.png")
    (tmp_path / "labels.txt").write_text("\n".join(texts) + "\n\n")
    argv = ["browse", "--model", str(clip), "--sae", str(sae.save(tmp_path / "sae")), "--images", str(tmp_path / "images"),
            "--out", str(tmp_path / "cli_site"), "--labels", str(tmp_path / "labels.txt"), "--templates", "name",
            "--similar", "0", "--num-workers", "0", "--quiet"]
    assert main(argv) == 0
    assert read_data(tmp_path / "cli_site", "meta")["text_labels"] == texts
    assert any(record["text_labels"] for record in read_site(tmp_path / "cli_site")["features"].values())
    missing = [*argv[:7], "--out", str(tmp_path / "cli_site2"), "--labels", str(tmp_path / "missing.txt"), "--quiet"]
    assert main(missing) == 2
    assert "--labels" in capsys.readouterr().err and not (tmp_path / "cli_site2").exists()


def test_bad_inputs_raise_clear_errors_before_writing(tmp_path):
    model, sae = _model(), _sae()
    images, _ = _dataset(6)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no images found in .*empty"):
        build_site(model, sae, empty, tmp_path / "site", progress=False)
    with pytest.raises(HookNameError, match=r"the SAE reads 'blocks.5.hook_resid_post'.*blocks 0-1.*trained on this model"):
        build_site(model, _sae(hook="blocks.5.hook_resid_post"), images, tmp_path / "site", progress=False)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not a feature-browser site"):
        build_site(model, sae, images, occupied, progress=False)
    assert (occupied / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="is a file"):
        build_site(model, sae, images, occupied / "notes.txt", progress=False)
    with pytest.raises(DataError, match="yielded no images"):
        build_site(model, sae, images[:0], tmp_path / "site", progress=False)
    for bad in (dict(top=0), dict(per_token=-1), dict(features="some"), dict(features=[3, 3]), dict(features=99)):
        with pytest.raises(ConfigError):
            build_site(model, sae, images, tmp_path / "site", progress=False, **bad)
    model.add_sae(sae)
    with pytest.raises(ConfigError, match="reset_saes"):
        build_site(model, sae, images, tmp_path / "site", progress=False)
    model.reset_saes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty", "occupied"]


def test_rebuilding_replaces_the_site_atomically(tmp_path, monkeypatch):
    model, sae = _model(), _sae()
    images, _ = _dataset(10)
    out = tmp_path / "site"
    build_site(model, sae, images, out, top=2, similar=0, progress=False)
    first = read_data(out, "meta")
    assert first["top"] == 2 and first["n_images"] == 10

    # A build that fails half-way leaves the previous site as it was, and no staging folder behind.
    import vit_sae_hooks.viz.site.build as site_build

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(site_build, "_write_features", fail)
        with pytest.raises(RuntimeError, match="disk full"):
            build_site(model, sae, images, out, top=4, similar=0, progress=False)
    assert read_data(out, "meta") == first
    assert [path.name for path in tmp_path.iterdir()] == ["site"]

    build_site(model, sae, images[:7], out, top=4, similar=0, progress=False)
    assert read_data(out, "meta")["top"] == 4 and read_data(out, "meta")["n_images"] == 7
    assert len(list((out / "thumbs").iterdir())) == 7  # nothing left of the bigger first site
    assert [path.name for path in tmp_path.iterdir()] == ["site"]


def test_browse_command(tmp_path, capsys):
    from vit_sae_hooks.data import shapes

    shapes.save_images(shapes.make_batch(12, seed=5), tmp_path / "shapes")
    out = tmp_path / "site"

    def browse(out: Path, features: str) -> int:
        return main(["browse", "--model", "vit-sae-hooks/shapes-vit", "--sae", "vit-sae-hooks/shapes-vit/resid_post/2",
                     "--images", str(tmp_path / "shapes"), "--out", str(out), "--top", "3", "--features", features,
                     "--limit", "10", "--num-workers", "0", "--quiet"])

    assert browse(out, "0-9,20") == 0
    printed = capsys.readouterr().out
    assert f"Open {(out / 'index.html').resolve().as_uri()}" in printed
    meta = read_data(out, "meta")
    assert meta["features"] == [*range(10), 20] and meta["n_images"] == 10 and meta["top"] == 3
    assert meta["classes"] == sorted(shapes.CLASSES)
    assert browse(tmp_path / "shapes", "all") == 2
    assert "not a feature-browser site" in capsys.readouterr().err
    assert browse(out, "x1") == 2
    assert "--features 'x1' is not 'all'" in capsys.readouterr().err


def test_sixty_five_thousand_features_stay_in_shards(tmp_path):
    """A 65536-feature SAE: the index reads one summary, each feature view one shard of FEATURES_PER_SHARD."""
    model = _model()
    sae = _sae(d_sae=65536, k=256)
    images, _ = _dataset(12)
    site = build_site(model, sae, images, tmp_path / "site", top=4, similar=0, progress=False)
    shards = sorted((site.folder / "data" / "features").iterdir())
    assert len(shards) == 65536 // files.FEATURES_PER_SHARD
    assert max(path.stat().st_size for path in shards) < 200_000
    summary = read_data(site.folder, "summary")
    assert len(summary["max"]) == 65536
    acts, _ = _reference(model, sae, images)
    live = acts.amax((0, 1)) > 0
    assert site.n_features - site.n_dead == int(live.sum()) > 20_000
    assert (site.folder / "data" / "summary.js").stat().st_size < 3_000_000


def test_video_clips_are_filmstrips_with_their_patch_maps_in_place(tmp_path):
    # A clip of 4 frames in tubelets of 2 has 2 time positions of 4 x 4 patches; the site shows the first
    # frame of each tubelet side by side, and patch (t, row, column) sits at (row, t * 4 + column).
    torch.manual_seed(0)
    model = HookedViT(HookedViTConfig(**BASE, n_frames=4, tubelet_size=2)).eval()
    sae = _sae("patches")
    clips = torch.randn(7, 4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    site = build_site(model, sae, clips, tmp_path / "site", top=3, similar=0, progress=False, unnormalize=((0, 0, 0), (1, 1, 1)))
    data = read_site(site.folder)
    meta = data["meta"]
    assert meta["grid"] == [4, 8] and (meta["thumb"]["height"], meta["thumb"]["width"]) == (16, 32)
    time, index = torch.arange(32) // 16, torch.arange(32) % 16
    assert meta["rows"]["patches"] == (index // 4 * 8 + time * 4 + index % 4).tolist()
    from PIL import Image

    thumb = torch.tensor(np.asarray(Image.open(site.folder / "thumbs" / "0.png")), dtype=torch.float32) / 255
    strip = torch.cat([clips[0, 0], clips[0, 2]], -1).clamp(0, 1).permute(1, 2, 0)
    torch.testing.assert_close(thumb, strip, atol=1 / 255, rtol=0)
    top = top_activating(model, sae, clips, list(range(D_SAE)), k=3, progress=False)
    assert top.patch_maps.shape[2:] == (2, 4, 4)  # one map per time position
    for feature, record in data["features"].items():
        for slot, code in enumerate(record["maps"]):
            levels = torch.tensor([files.MAP_ALPHABET.index(c) for c in code], dtype=torch.float32).view(4, 8)
            expected = top.patch_maps[feature, slot].permute(1, 0, 2).reshape(4, 8)  # [t, r, c] -> [r, t * 4 + c]
            score = top.scores[feature, slot]
            torch.testing.assert_close(levels / 63 * score, expected, atol=score.item() / 126 + 1e-6, rtol=0)
