"""SAE training: dictionary recovery on synthetic sparse data, the objective against the SAE module, data streams."""

from __future__ import annotations

import pytest
import torch

from vit_sae_hooks import HookedViT, HookedViTConfig
from vit_sae_hooks.errors import ConfigError, DataError, HookNameError, InputShapeError
from vit_sae_hooks.hook_names import stop_layer
from vit_sae_hooks.training import (
    BlockStream,
    ImageActivations,
    TensorActivations,
    TrainConfig,
    geometric_median,
    hook_activations,
    select_tokens,
    train_sae,
)
from vit_sae_hooks.training.objective import TrainingObjective
from vit_sae_hooks.training.trainer import learning_rate_at, sparsity_coefficient_at


def sparse_data(
    d: int = 32, n_atoms: int = 128, n: int = 50_000, active: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x = codes @ dictionary + noise + offset`` with ``active`` random atoms per token; returns (x, dictionary)."""
    generator = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(n_atoms, d, generator=generator)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    chosen = torch.rand(n, n_atoms, generator=generator).argsort(1)[:, :active]
    codes = torch.zeros(n, n_atoms).scatter(1, chosen, torch.rand(n, active, generator=generator) + 0.5)
    x = codes @ dictionary + 0.01 * torch.randn(n, d, generator=generator) + 0.3
    return x, dictionary


def mean_max_cosine(dictionary: torch.Tensor, decoder: torch.Tensor) -> float:
    decoder = decoder / decoder.norm(dim=1, keepdim=True)
    return float((dictionary @ decoder.T).max(dim=1).values.mean())


def tiny_model(n_layers: int = 2) -> HookedViT:
    torch.manual_seed(0)
    cfg = HookedViTConfig(
        n_layers=n_layers, d_model=32, n_heads=4, d_mlp=64, image_size=16, patch_size=8, ln_pre=True,
        act_fn="quick_gelu", head_type="linear", d_output=16, model_name="tiny",
    )
    return HookedViT(cfg).eval()


def test_topk_recovers_the_dictionary_of_synthetic_sparse_data():
    x, dictionary = sparse_data()
    config = TrainConfig(
        architecture="topk", k=4, d_sae=256, batch_size=256, tokens_budget=150_000, lr=5e-3, warmup_steps=10,
        dead_tokens=5_000, init_tokens=4096, decay_fraction=0.3,
    )
    sae = train_sae(TensorActivations(x), config, progress=False)
    assert mean_max_cosine(dictionary, sae.W_dec.detach()) >= 0.9
    # The trained SAE is an ordinary SAE: its own forward reconstructs the data well.
    with torch.no_grad():
        error = (sae(x[:2000]) - x[:2000]).pow(2).sum() / (x[:2000] - x[:2000].mean(0)).pow(2).sum()
    assert error < 0.25


def test_relu_with_l1_recovers_the_dictionary_at_a_looser_bar():
    x, dictionary = sparse_data()
    config = TrainConfig(
        architecture="standard", d_sae=256, batch_size=256, tokens_budget=300_000, lr=5e-3, warmup_steps=10,
        l1_coefficient=0.3, sparsity_warmup_steps=100, init_tokens=4096, decay_fraction=0.3,
    )
    sae = train_sae(TensorActivations(x), config, progress=False)
    assert mean_max_cosine(dictionary, sae.W_dec.detach()) >= 0.8
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(256), atol=1e-5)


def test_jumprelu_trains_to_a_sparse_code():
    x, _ = sparse_data(n=10_000)
    metrics = []
    config = TrainConfig(
        architecture="jumprelu", d_sae=128, batch_size=256, tokens_budget=40_000, lr=5e-3, warmup_steps=10,
        l0_coefficient=0.01, sparsity_warmup_steps=20, init_tokens=2048, log_every=50,
    )
    sae = train_sae(TensorActivations(x), config, progress=False, callbacks=[lambda step, m: metrics.append(m)])
    assert metrics[-1]["explained_variance"] > 0.5
    assert metrics[-1]["l0"] < 64
    assert bool((sae.threshold > 0).all())


@pytest.mark.parametrize("architecture", ["topk", "standard", "jumprelu"])
@pytest.mark.parametrize("normalization", ["none", "scaling_factor"])
def test_the_training_objective_reconstructs_exactly_what_the_sae_module_does(architecture, normalization):
    x, _ = sparse_data(n=600)
    config = TrainConfig(
        architecture=architecture, k=4, d_sae=64, batch_size=200, tokens_budget=400, lr=1e-2, warmup_steps=0,
        normalize_activations=normalization, init_tokens=512, sparsity_warmup_steps=0,
    )
    sae = train_sae(TensorActivations(x), config, progress=False)
    objective = TrainingObjective(sae, config, variance=1.0)
    no_dead = torch.zeros(sae.d_sae, dtype=torch.bool)
    _, stats, _ = objective(x[:300], no_dead, 0.0)
    with torch.no_grad():
        recon = sae(x[:300])
    scale = sae.cfg.scaling_factor or 1.0
    # stats[4] is the summed squared error in the normalised space the SAE works in.
    assert float(stats[4]) == pytest.approx(float((recon - x[:300]).pow(2).sum()) * scale**2, rel=1e-4)


def test_auxk_gives_dead_latents_gradient():
    x, _ = sparse_data(n=512)
    config = TrainConfig(architecture="topk", k=4, d_sae=64, batch_size=256, tokens_budget=256, init_tokens=256)
    sae = train_sae(TensorActivations(x), config, progress=False)
    objective = TrainingObjective(sae, config, variance=1.0)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:32] = True
    loss, stats, _ = objective(x[:256], dead, 0.0)
    loss.backward()
    assert float(stats[2]) > 0  # the auxiliary loss
    assert float(sae.W_enc.grad[:, :32].abs().sum()) > 0


def test_learning_rate_warms_up_and_decays_and_l1_ramps():
    config = TrainConfig(architecture="standard", batch_size=1, tokens_budget=100, warmup_steps=10, decay_fraction=0.2,
                         l1_coefficient=4.0, sparsity_warmup_steps=8)
    rates = [learning_rate_at(step, 1.0, config) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == rates[50] == 1.0
    assert rates[80] == 1.0 and rates[99] == pytest.approx(1 / 20) and rates[90] < rates[85]
    assert sparsity_coefficient_at(3, config) == pytest.approx(2.0) and sparsity_coefficient_at(50, config) == 4.0


def test_geometric_median_ignores_outliers_that_move_the_mean():
    points = torch.randn(1000, 8, generator=torch.Generator().manual_seed(0)) * 0.1 + 1.0
    points[:100] += 1000.0
    assert torch.allclose(geometric_median(points), torch.ones(8), atol=0.1)
    assert float(points.mean(0)[0]) > 50


def test_block_stream_resumes_from_its_state_with_the_same_batches():
    data = TensorActivations(torch.randn(1000, 8, generator=torch.Generator().manual_seed(0)), block_tokens=300)
    stream = data.stream(0, 1, seed=3)
    stream.next_batch(450)
    state = stream.state_dict()
    expected = torch.cat([stream.next_batch(400) for _ in range(5)])  # crosses blocks and an epoch boundary
    resumed = data.stream(0, 1, seed=3)
    resumed.load_state_dict(state)
    assert torch.equal(torch.cat([resumed.next_batch(400) for _ in range(5)]), expected)


def test_shards_partition_the_rows_and_each_epoch_reshuffles():
    rows = torch.arange(100.0)[:, None]
    data = TensorActivations(rows, block_tokens=1000)
    first = torch.cat([data.stream(shard, 4, seed=0).next_batch(25) for shard in range(4)])
    assert sorted(first[:, 0].tolist()) == list(range(100))
    stream = data.stream(0, 1, seed=0)
    assert not torch.equal(stream.next_batch(100), stream.next_batch(100))


def test_hook_activations_stop_early_and_select_token_sets():
    model = tiny_model(n_layers=3)
    images = torch.randn(2, 3, 16, 16)
    _, cache = model.run_with_cache(images)
    reference = cache["blocks.1.hook_resid_post"]
    assert stop_layer("blocks.1.hook_resid_post") == 2 and stop_layer("hook_embed") == 0 and stop_layer("hook_pooled") is None
    # The full cache takes the explicit attention path, the early stop the fused one: equal to rounding.
    close = dict(atol=1e-5, rtol=1e-5)
    assert torch.allclose(hook_activations(model, images, "blocks.1.hook_resid_post"), reference.reshape(-1, 32), **close)
    assert torch.allclose(hook_activations(model, images, "blocks.1.hook_resid_post", "cls"), reference[:, 0], **close)
    patches = hook_activations(model, images, "blocks.1.hook_resid_post", "patches")
    assert torch.allclose(patches, reference[:, 1:].reshape(-1, 32), **close)
    assert hook_activations(model, images, "hook_pooled").shape == (2, 32)
    with pytest.raises(ConfigError, match="'all'"):
        hook_activations(model, images, "hook_pooled", "cls")
    with pytest.raises(InputShapeError, match="hook_pattern"):
        hook_activations(model, images, "blocks.0.attn.hook_pattern")
    with pytest.raises(ConfigError, match="token set"):
        select_tokens(reference, "registers", 1)


def test_image_activations_mix_images_in_a_batch_and_accept_plain_iterables():
    model = tiny_model()
    images = [torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(12)]
    labelled = [(image, 0) for image in images]
    data = ImageActivations(model, "blocks.0.hook_resid_post", labelled, token_set="patches", images_per_block=6,
                            batch_size=4)
    assert data.d_in == 32
    batch = data.stream(0, 1, seed=0).next_batch(24)  # 6 images x 4 patches per block
    per_image = torch.stack([hook_activations(model, image[None], "blocks.0.hook_resid_post", "patches") for image in images])
    owners = {int(((per_image - row).abs().sum(-1) < 1e-4).nonzero()[0, 0]) for row in batch}
    assert len(owners) == 6
    as_iterable = ImageActivations(model, "blocks.0.hook_resid_post", (image for image in images), images_per_block=6)
    with pytest.raises(DataError, match="re-iterable"):
        stream = as_iterable.stream(0, 1, seed=0)
        for _ in range(40):
            stream.next_batch(30)


def test_bad_inputs_raise_library_errors():
    with pytest.raises(HookNameError, match=r"blocks\.1\.hook_resid_post"):
        ImageActivations(tiny_model(), "blocks.5.hook_resid_post", [])
    with pytest.raises(ConfigError, match="k="):
        TrainConfig(architecture="topk", k=0)
    with pytest.raises(ConfigError, match="smaller than one batch"):
        TrainConfig(batch_size=4096, tokens_budget=100)
    with pytest.raises(ConfigError, match="data_shards"):
        train_sae(TensorActivations(torch.randn(100, 8)), TrainConfig(batch_size=10, tokens_budget=100, data_shards=3),
                  progress=False)
    with pytest.raises(InputShapeError, match=r"\[tokens, d_in\]"):
        TensorActivations(torch.randn(4, 5, 6))
    with pytest.raises(InputShapeError, match=r"\[C, H, W\]"):
        ImageActivations(tiny_model(), "blocks.0.hook_resid_post", [torch.randn(16, 16)]).stream(0, 1, 0).next_batch(4)


def test_block_stream_rejects_empty_blocks():
    with pytest.raises(DataError, match="no tokens"):
        BlockStream(lambda index: torch.empty(0, 4)).next_batch(1)


def test_wandb_is_imported_only_when_asked_and_receives_the_live_metrics(monkeypatch):
    import sys
    import types

    logged = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: types.SimpleNamespace(
        id="run-1", log=lambda values, step: logged.append((step, values)), finish=lambda: logged.append("finished")
    )
    x, _ = sparse_data(n=2000)
    config = dict(architecture="topk", k=4, d_sae=64, batch_size=200, tokens_budget=1000, init_tokens=400, log_every=2)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: only an error if asked for
    train_sae(TensorActivations(x), TrainConfig(**config), progress=False)
    with pytest.raises(ConfigError, match="pip install wandb"):
        train_sae(TensorActivations(x), TrainConfig(**config, wandb_project="p"), progress=False)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train_sae(TensorActivations(x), TrainConfig(**config, wandb_project="p"), progress=False)
    assert [step for step, _ in logged[:-1]] == [2, 4, 5] and logged[-1] == "finished"
    assert {"loss", "explained_variance", "l0", "dead_fraction", "lr"} <= set(logged[0][1])
