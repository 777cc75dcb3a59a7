"""evaluate() on tiny random models: identity and zero SAEs, agreement with the splice, token sets, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.errors import ConfigError, DataError, HookNameError, InputShapeError
from vit_sae_hooks.evals import COLUMNS, EvalResult, ModelHead, ZeroShotHead, evaluate, format_row

Image = pytest.importorskip("PIL.Image")

N_CLASSES = 5


@pytest.fixture(scope="module")
def classifier() -> HookedViT:
    torch.manual_seed(0)
    cfg = HookedViTConfig(
        n_layers=3, d_model=16, n_heads=2, d_mlp=32, image_size=16, patch_size=8, ln_pre=True,
        head_type="linear", d_output=N_CLASSES, original_architecture="ViTForImageClassification",
    )
    return HookedViT(cfg).eval()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(7, 3, 16, 16, generator=generator), torch.randint(0, N_CLASSES, (7,), generator=generator)


def identity_sae(d: int, hook_name: str, token_set: str = "all") -> SAE:
    """relu(x) - relu(-x) = x: a ReLU SAE that reconstructs exactly."""
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, hook_name=hook_name, token_set=token_set, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def random_sae(d: int, hook_name: str, token_set: str = "all", seed: int = 0, **kwargs) -> SAE:
    torch.manual_seed(seed)
    return SAE(SAEConfig(d_in=d, d_sae=4 * d, hook_name=hook_name, token_set=token_set, **kwargs))


@pytest.mark.parametrize("hook_name", ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.2.attn.hook_z"])
def test_identity_sae_explains_everything_and_recovers_all_ce(classifier, batch, hook_name):
    images, labels = batch
    result = evaluate(classifier, identity_sae(16, hook_name), images, labels=labels, batch_size=3, progress=False)
    assert result.explained_variance_pct == pytest.approx(100)
    assert result.explained_variance == pytest.approx(1)
    assert result.ce_recovered_pct == pytest.approx(100)
    assert result.recon_ce == pytest.approx(result.ce, abs=1e-6)
    assert result.cos_sim == pytest.approx(1) and result.recon_cos_sim == pytest.approx(1)
    assert result.kl_div == pytest.approx(0, abs=1e-9)
    assert result.n_images == 7 and result.n_tokens == 7 * 5


def test_zero_output_sae_equals_zero_ablation(classifier, batch):
    images, labels = batch
    sae = random_sae(16, "blocks.1.hook_resid_post", token_set="patches")
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    result = evaluate(classifier, sae, images, labels=labels, batch_size=4, progress=False)
    assert result.recon_ce == pytest.approx(result.zero_abl_ce, rel=1e-12)
    assert result.ce_recovered_pct == pytest.approx(0, abs=1e-9)
    assert result.mse > 0 and result.avg_cls_l0 is None


@pytest.mark.parametrize("token_set", ["all", "cls", "patches"])
@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_metrics_equal_the_spliced_model_and_a_hand_computation(classifier, batch, token_set, architecture):
    images, labels = batch
    hook_name = "blocks.1.hook_resid_post"
    sae = random_sae(16, hook_name, token_set, architecture=architecture, k=4 if architecture == "topk" else None)
    result = evaluate(classifier, sae, images, labels=labels, batch_size=7, progress=False)
    with torch.no_grad():
        clean, cache = classifier.run_with_cache(images, names_filter=[hook_name])
        spliced = classifier.run_with_saes(images, saes=[sae])  # the lead's splice, as users would run it
        positions = {"all": slice(None), "cls": slice(0, 1), "patches": slice(1, None)}[token_set]

        def zero(activation, hook):
            activation = activation.clone()
            activation[:, positions] = 0
            return activation

        zeroed = classifier.run_with_hooks(images, fwd_hooks=[(hook_name, zero)])
        x = cache[hook_name][:, positions].reshape(-1, 16).double()
        x_hat = sae(x.float()).double()
    assert result.ce == pytest.approx(F.cross_entropy(clean.double(), labels).item(), rel=1e-6)
    assert result.recon_ce == pytest.approx(F.cross_entropy(spliced.double(), labels).item(), rel=1e-5)
    assert result.zero_abl_ce == pytest.approx(F.cross_entropy(zeroed.double(), labels).item(), rel=1e-6)
    assert result.recon_cos_sim == pytest.approx(F.cosine_similarity(clean, spliced).mean().item(), rel=1e-5)
    expected_ev = 100 * (1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert result.explained_variance_pct == pytest.approx(expected_ev, rel=1e-4)
    assert result.mse == pytest.approx((x - x_hat).pow(2).sum(-1).mean().item(), rel=1e-4)
    assert result.tokens == token_set and result.n_tokens == x.shape[0]


def test_tokens_override_and_zero_ablation_of_all_tokens(classifier, batch):
    images, labels = batch
    sae = random_sae(16, "blocks.0.hook_resid_post", token_set="all")
    cls_only = evaluate(classifier, sae, images, labels=labels, tokens="cls", progress=False)
    assert cls_only.n_tokens == 7 and cls_only.avg_l0 == cls_only.avg_cls_l0
    everything = evaluate(classifier, sae, images, labels=labels, tokens="cls", zero_ablation="all", progress=False)
    with torch.no_grad():
        zeroed = classifier.run_with_hooks(images, fwd_hooks=[("blocks.0.hook_resid_post", lambda a, hook: torch.zeros_like(a))])
    assert everything.zero_abl_ce == pytest.approx(F.cross_entropy(zeroed, labels).item(), rel=1e-6)
    assert everything.settings["zero_ablation"] == "all"


def test_a_per_image_token_mask_is_split_over_batches_and_scored_by_hand(classifier, batch):
    # Each image's own tokens (a [n_images, pos] mask), evaluated in batches of 3: the metrics cover exactly
    # the masked rows, and the spliced model is the one the mask splices.
    images, labels = batch
    hook_name = "blocks.1.hook_resid_post"
    sae = random_sae(16, hook_name, architecture="topk", k=4)
    mask = torch.zeros(7, 5, dtype=torch.bool)
    mask[:, 0] = True
    mask[torch.arange(7), 1 + torch.arange(7) % 4] = True
    result = evaluate(classifier, sae, images, labels=labels, tokens=mask, batch_size=3, progress=False)
    with torch.no_grad():
        _, cache = classifier.run_with_cache(images, names_filter=[hook_name])
        x = cache[hook_name][mask].double()
        x_hat = sae(x.float()).double()
        spliced = classifier.run_with_saes(images, saes=[sae], tokens=mask)
    assert result.n_tokens == 14 and result.tokens == "mask [7, 5]"
    expected_ev = 100 * (1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert result.explained_variance_pct == pytest.approx(expected_ev, rel=1e-4)
    assert result.recon_ce == pytest.approx(F.cross_entropy(spliced.double(), labels).item(), rel=1e-5)
    with pytest.raises(InputShapeError, match="the token mask has 5 rows but the data has more images"):
        evaluate(classifier, sae, images, labels=labels, tokens=mask[:5], batch_size=3, progress=False)


def test_reconstruction_only_run_stops_at_the_hook(classifier, batch):
    images, _ = batch
    result = evaluate(classifier, identity_sae(16, "blocks.0.hook_resid_post"), images, downstream=False, progress=False)
    assert result.explained_variance_pct == pytest.approx(100)
    assert result.ce is None and result.recon_cos_sim is None


def test_markdown_row_follows_the_published_column_order(classifier, batch):
    images, labels = batch
    result = evaluate(classifier, identity_sae(16, "blocks.1.hook_resid_post"), images, labels=labels,
                      sae_name="identity", progress=False)
    header = EvalResult.markdown_header().splitlines()[0]
    assert header.startswith("| SAE | Hook | Tokens | % Explained var. | Avg L0 | Avg CLS L0 | Cos sim | Recon cos sim | CE |")
    assert header.endswith("| Dead Feature Proportion | Active Feature Proportion |")
    row = result.markdown_row()
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:4] == ["identity", "blocks.1.hook_resid_post", "all", "100.0"]
    assert len(cells) == 3 + len(COLUMNS)
    assert result.markdown_row(variant="prisma") != "" and result.to_dict()["metrics"]["ce"] == result.ce
    published = format_row("published", "blocks.9.hook_resid_post", "all", {"ce": 6.762, "avg_cls_l0": None})
    assert "| 6.762 |" in published and published.count("| - ") == len(COLUMNS) - 1
    with pytest.raises(AttributeError, match="no metric 'nope'"):
        _ = result.nope


def test_image_folder_labels_map_to_head_classes_by_name(tmp_path, classifier):
    names = ["ant", "bee", "cat", "dog", "eel"]
    for name in ("eel", "bee"):  # a subset of the head's classes, in another order
        (tmp_path / name).mkdir()
        for index in range(2):
            pixels = np.random.default_rng(index).integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{index}.png")
    head = ModelHead(N_CLASSES, names)
    sae = identity_sae(16, "blocks.1.hook_resid_post")
    from vit_sae_hooks.data import ImageFolder, Preprocess, image_loader

    dataset = ImageFolder(tmp_path, transform=Preprocess(16))
    result = evaluate(classifier, sae, image_loader(dataset, num_workers=0), head=head, progress=False)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    mapped = torch.tensor([names.index(dataset.classes[label]) for label in dataset.labels])
    with torch.no_grad():
        expected = F.cross_entropy(classifier(images), mapped).item()
    assert result.ce == pytest.approx(expected, rel=1e-6)
    with pytest.raises(DataError, match=r"match neither the head's class names nor its number of classes \(5\)"):
        evaluate(classifier, sae, dataset, head=ModelHead(N_CLASSES, ["v", "w", "x", "y", "z"]), progress=False)


def test_bad_inputs_raise_library_errors(tmp_path, classifier, batch):
    images, labels = batch
    with pytest.raises(HookNameError, match=r"blocks\.7\.hook_resid_post"):
        evaluate(classifier, random_sae(16, "blocks.7.hook_resid_post"), images, progress=False)
    with pytest.raises(InputShapeError, match="d_in=12"):
        evaluate(classifier, random_sae(12, "blocks.1.hook_resid_post"), images, progress=False)
    sae = random_sae(16, "blocks.1.hook_resid_post")
    with pytest.raises(DataError, match="label 9 is out of range for a head with 5 classes"):
        evaluate(classifier, sae, images, labels=torch.full((7,), 9), progress=False)
    with pytest.raises(DataError, match="7 images but 2 labels"):
        evaluate(classifier, sae, images, labels=labels[:2], progress=False)
    with pytest.raises(ConfigError, match="head reads 8-wide embeddings but the model outputs 5"):
        evaluate(classifier, sae, images, head=ZeroShotHead(torch.randn(3, 8)), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        evaluate(classifier, sae, tmp_path / "empty", progress=False)
    (tmp_path / "broken" / "cat").mkdir(parents=True)
    (tmp_path / "broken" / "cat" / "0.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*0\.jpg"):
        evaluate(classifier, sae, tmp_path / "broken", num_workers=0, downstream=False, progress=False)
    classifier.add_sae(sae)
    try:
        with pytest.raises(ConfigError, match="reset_saes"):
            evaluate(classifier, sae, images, progress=False)
    finally:
        classifier.reset_saes()
