"""Training BatchTopK, Matryoshka and gated SAEs and transcoders, and several SAEs from one stream of activations."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_training import mean_max_cosine, sparse_data, tiny_model

from vit_sae_hooks import SAE
from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.sae import BatchTopKSAE, GatedSAE, MatryoshkaSAE
from vit_sae_hooks.training import ImageActivations, TensorActivations, TrainConfig, hook_activations, train_sae, train_saes
from vit_sae_hooks.training.objective import TrainingObjective

RECOVERY = dict(d_sae=256, batch_size=256, tokens_budget=300_000, lr=5e-3, warmup_steps=10, dead_tokens=5_000,
                init_tokens=4096, decay_fraction=0.3)


def _explained(sae: SAE, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    y = x if y is None else y
    with torch.no_grad():
        return 1 - float((sae(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def test_batchtopk_recovers_the_dictionary_and_thresholds_per_image_at_inference():
    x, dictionary = sparse_data()
    sae = train_sae(TensorActivations(x), TrainConfig(architecture="batchtopk", k=4, **RECOVERY), progress=False)
    assert isinstance(sae, BatchTopKSAE)
    assert mean_max_cosine(dictionary, sae.W_dec.detach()) >= 0.9
    # The running threshold makes the per-token rule keep about k latents, independently of batch-mates.
    with torch.no_grad():
        acts = sae.encode(x[:4000])
        assert 2.5 < float((acts > 0).sum(-1).float().mean()) < 6
        torch.testing.assert_close(sae.encode(x[:10]), acts[:10])
    assert float(sae.threshold.min()) == float(sae.threshold.max()) > 0
    assert _explained(sae, x[:4000]) > 0.75


def test_matryoshka_recovers_the_dictionary_and_its_first_prefix_reconstructs_alone():
    x, dictionary = sparse_data()
    config = TrainConfig(architecture="matryoshka", k=4, prefixes=(32, 96), **RECOVERY)
    sae = train_sae(TensorActivations(x), config, progress=False)
    assert isinstance(sae, MatryoshkaSAE) and sae.cfg.prefixes == (32, 96, 256)
    assert mean_max_cosine(dictionary, sae.W_dec.detach()) >= 0.85
    coarse = sae.prefix_sae(32)
    # The first 32 latents alone explain a good share; an untrained 32-latent prefix explains nothing.
    assert _explained(coarse, x[:4000]) > 0.3
    assert _explained(sae, x[:4000]) > _explained(coarse, x[:4000])


def test_gated_trains_to_a_sparse_code():
    x, _ = sparse_data(n=10_000)
    metrics = []
    config = TrainConfig(architecture="gated", d_sae=128, batch_size=256, tokens_budget=60_000, lr=5e-3,
                         warmup_steps=10, l1_coefficient=0.3, sparsity_warmup_steps=20, init_tokens=2048, log_every=50)
    sae = train_sae(TensorActivations(x), config, progress=False, callbacks=[lambda step, m: metrics.append(m)])
    assert isinstance(sae, GatedSAE)
    assert metrics[-1]["explained_variance"] > 0.6 and metrics[-1]["l0"] < 40
    assert _explained(sae, x[:2000]) > 0.6


def _transcoder_data(n: int = 40_000, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    # y is a fixed function of x: 64 thresholded ReLU features of x plus a linear part; seed draws the x.
    generator = torch.Generator().manual_seed(0)
    x, _ = sparse_data(n=n, seed=seed)
    readers = torch.randn(32, 64, generator=generator) / 32**0.5
    writers = torch.randn(64, 24, generator=generator) / 8
    linear = torch.randn(32, 24, generator=generator) / 32**0.5
    y = torch.relu(x @ readers - 0.4) @ writers + 0.5 * x @ linear
    return x, y


def test_a_transcoder_learns_to_predict_the_output_hook():
    x, y = _transcoder_data()
    data = TensorActivations({"in": x, "out": y})
    config = TrainConfig(architecture="transcoder", k=16, d_sae=256, batch_size=256, tokens_budget=200_000, lr=5e-3,
                         warmup_steps=10, init_tokens=4096, dead_tokens=5_000, hook_name="in", hook_name_out="out",
                         skip_connection=True)
    transcoder = train_sae(data, config, progress=False)
    assert transcoder.is_transcoder and transcoder.cfg.architecture == "topk"
    assert (transcoder.hook_name, transcoder.hook_name_out, transcoder.d_in, transcoder.d_out) == ("in", "out", 32, 24)
    held_x, held_y = _transcoder_data(n=4000, seed=2)
    assert _explained(transcoder, held_x, held_y) > 0.85
    # The prediction is the transcoder's forward: decode plus the learned skip term.
    with torch.no_grad():
        torch.testing.assert_close(
            transcoder(held_x[:5]), transcoder.decode(transcoder.encode(held_x[:5])) + held_x[:5] @ transcoder.W_skip.T
        )


def test_several_saes_from_one_stream_equal_separate_runs():
    x, _ = sparse_data(n=6_000)
    base = TrainConfig(architecture="topk", k=4, d_sae=64, batch_size=200, tokens_budget=4_000, lr=5e-3,
                       warmup_steps=2, init_tokens=1000, dead_tokens=400)
    configs = [base, dataclasses.replace(base, k=8), dataclasses.replace(base, architecture="batchtopk"),
               dataclasses.replace(base, architecture="matryoshka", prefixes=(16,))]
    together = train_saes(TensorActivations(x), configs, progress=False)
    for config, sae in zip(configs, together, strict=True):
        alone = train_sae(TensorActivations(x), config, progress=False)
        for name, tensor in alone.state_dict().items():
            torch.testing.assert_close(sae.state_dict()[name], tensor, atol=0, rtol=0, msg=name)


def test_saes_on_several_hooks_read_their_own_columns(tmp_path):
    x, _ = sparse_data(n=4_000)
    doubled = 2 * x[:, :16]
    data = TensorActivations({"a": x, "b": doubled})
    base = TrainConfig(architecture="topk", k=4, d_sae=64, batch_size=200, tokens_budget=2_000, warmup_steps=2,
                       init_tokens=1000)
    saes = train_saes(data, [dataclasses.replace(base, hook_name="a"), dataclasses.replace(base, hook_name="b")],
                      outs=[tmp_path / "a", tmp_path / "b"], progress=False)
    assert [(sae.hook_name, sae.d_in) for sae in saes] == [("a", 32), ("b", 16)]
    alone = train_sae(TensorActivations(doubled, hook_name="b"), base, progress=False)
    torch.testing.assert_close(saes[1].W_enc, alone.W_enc, atol=0, rtol=0)
    assert SAE.load(tmp_path / "b").hook_name == "b"
    with pytest.raises(ConfigError, match="holds several hooks"):
        train_sae(data, base, progress=False)
    with pytest.raises(ConfigError, match="the data holds"):
        train_sae(data, dataclasses.replace(base, hook_name="c"), progress=False)
    with pytest.raises(ConfigError, match="share batch_size"):
        train_saes(data, [dataclasses.replace(base, hook_name="a"),
                          dataclasses.replace(base, hook_name="b", batch_size=100)], progress=False)


def test_image_activations_read_several_hooks_in_one_pass():
    model = tiny_model(n_layers=3)
    images = [torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    hooks = ["blocks.0.hook_resid_post", "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", "blocks.0.attn.hook_z"]
    data = ImageActivations(model, hooks, images, token_set="patches", images_per_block=6, batch_size=3)
    assert data.widths == (32, 32, 32, 32) and data.d_in == 128
    together = data.activations(images)
    separate = torch.cat([hook_activations(model, torch.stack(images), hook, "patches") for hook in hooks], 1)
    torch.testing.assert_close(together, separate, atol=1e-5, rtol=1e-5)


def test_objective_for_a_transcoder_measures_the_output_hook():
    x, y = _transcoder_data(n=500)
    config = TrainConfig(architecture="standard", d_sae=64, batch_size=500, tokens_budget=500, hook_name="in",
                         hook_name_out="out")
    transcoder = SAE(train_sae(TensorActivations({"in": x, "out": y}), config, progress=False).cfg)
    objective = TrainingObjective(transcoder, config, variance=1.0)
    _, stats, _ = objective(x, torch.zeros(64, dtype=torch.bool), 0.0, y)
    with torch.no_grad():
        expected = (transcoder(x) - y).pow(2).sum(-1).mean()
    torch.testing.assert_close(stats[4] / 500, expected, rtol=1e-5, atol=1e-6)
    assert stats.shape[0] == 7 + 24


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(architecture="matryoshka"), "needs prefixes"),
        (dict(architecture="matryoshka", prefixes=(64, 32)), "strictly increasing"),
        (dict(architecture="matryoshka", prefixes=(0, 32)), "prefixes must be a positive integer"),
        (dict(architecture="transcoder"), "pass --hook-out"),
        (dict(hook_name="a", hook_name_out="a"), "both are 'a'"),
        (dict(hook_name="a", hook_name_out="b", normalize_activations="scaling_factor"), "transcoders train on raw"),
        (dict(skip_connection=True), "skip_connection is for transcoders"),
        (dict(architecture="batchtopk", k=0), "k must be a positive integer"),
    ],
)
def test_bad_training_configs_name_the_fix(fields, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**fields)


def test_prefixes_beyond_d_sae_are_reported_when_the_sae_is_built():
    x, _ = sparse_data(n=1_000)
    config = TrainConfig(architecture="matryoshka", k=4, d_sae=64, prefixes=(32, 128), batch_size=200,
                         tokens_budget=400, init_tokens=400)
    with pytest.raises(ConfigError, match="exceed d_sae=64"):
        train_sae(TensorActivations(x), config, progress=False)
