"""Sparse probing: the regression against its optimality conditions, the pooling against a hand-written forward,
the task logic on planted data, and the probes on the demo's trained SAEs."""

from __future__ import annotations

import pytest
import torch

from vit_sae_hooks import SAE, HookedViT, SAEConfig
from vit_sae_hooks.data import shapes
from vit_sae_hooks.errors import ConfigError, DataError
from vit_sae_hooks.evals.probing import (
    PooledActivations,
    fit_logistic_regression,
    pooled_activations,
    probe_pooled,
    sparse_probing,
    top_mean_difference,
)


@pytest.mark.parametrize("l2", [1e-3, 0.3])
def test_logistic_regression_meets_its_optimality_conditions(l2):
    # The gradient of mean BCE + l2 |w|^2 / 2, written out by hand, vanishes at the fitted weights.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=generator, dtype=torch.float64)
    y = ((x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 1.0], dtype=torch.float64)
          + 0.8 * torch.randn(300, generator=generator, dtype=torch.float64)) > 0).long()
    weight, bias = fit_logistic_regression(x, y, l2)
    residual = torch.sigmoid(x @ weight + bias) - y.double()
    assert (x.T @ residual / 300 + l2 * weight).abs().max() < 1e-7
    assert abs(residual.mean()) < 1e-7
    assert weight[1] < -weight[0] < 0 < weight[0] and weight[3:5].abs().max() < weight[0]  # the planted directions


def test_top_mean_difference_is_the_largest_absolute_difference_of_means():
    generator = torch.Generator().manual_seed(1)
    features = torch.rand(60, 20, generator=generator)
    positive = torch.arange(60) % 3 == 0
    features[positive, 7] += 2.0
    features[positive, 11] -= 1.5  # a feature that fires less on the class also separates it
    chosen = top_mean_difference(features, positive, 3)
    by_hand = sorted(range(20), key=lambda j: -abs(features[positive, j].mean() - features[~positive, j].mean()).item())
    assert chosen.tolist() == by_hand[:3] and chosen[:2].tolist() == [7, 11]


def _planted(n: int, seed: int) -> PooledActivations:
    # Feature 5 fires only on class 1; feature 9 only on class 2; the rest is noise. Class 0 has no feature.
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=generator)
    features = torch.rand(n, 30, generator=generator) * 0.1
    features[:, 5] += (labels == 1) * (1 + torch.rand(n, generator=generator))
    features[:, 9] += (labels == 2) * (1 + torch.rand(n, generator=generator))
    inputs = torch.randn(n, 4, generator=generator) + labels[:, None] * torch.tensor([1.0, 0.0, -1.0, 0.5])
    return PooledActivations(features, inputs, labels, ["plain", "five", "nine"])


def test_probes_find_planted_features_and_balance_each_task():
    result = probe_pooled(_planted(600, 0), _planted(400, 1), ks=(1, 3), baseline=True)
    assert result.tasks == ["plain", "five", "nine"]
    assert result.chosen["five"][0] == 5 and result.chosen["nine"][0] == 9
    assert result.per_task["five"][1] == 1.0 and result.per_task["nine"][1] == 1.0
    # "plain" is told apart by the absence of both features: one feature cannot, three can.
    assert result.per_task["plain"][1] < 0.85 and result.per_task["plain"][3] > 0.95
    assert result.accuracy[3] == pytest.approx(sum(task[3] for task in result.per_task.values()) / 3)
    assert result.baseline_accuracy > 0.7
    again = probe_pooled(_planted(600, 0), _planted(400, 1), ks=(1, 3), tasks=["nine", 1])
    assert again.tasks == ["nine", "five"] and again.per_task["nine"] == result.per_task["nine"]
    noise = _planted(600, 2)
    noise.features = torch.rand(600, 30, generator=torch.Generator().manual_seed(3))
    assert probe_pooled(noise, _planted(400, 4), ks=(1,), baseline=False).accuracy[1] < 0.65  # chance is 0.5


def test_pooled_activations_equal_a_hand_written_forward():
    model = HookedViT.from_pretrained("vit-sae-hooks/shapes-vit")
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=model.cfg.d_model, d_sae=64, architecture="topk", k=4, token_set="patches",
                        hook_name="blocks.1.hook_resid_post", normalize_activations="layer_norm"))
    images, labels = next(shapes.batches(10, 1, seed=3))
    for pooling in ("mean", "max"):
        pooled = pooled_activations(model, sae, images, labels, pooling=pooling, batch_size=4, progress=False)
        _, cache = model.run_with_cache(images, names_filter=[sae.hook_name])
        patches = cache[sae.hook_name][:, model.cfg.n_prefix_tokens:].double()
        with torch.no_grad():
            features = sae.double().encode(patches)
        sae.float()
        reduce = (lambda t: t.mean(1)) if pooling == "mean" else (lambda t: t.amax(1))
        torch.testing.assert_close(pooled.features.double(), reduce(features), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pooled.inputs.double(), reduce(patches), atol=1e-5, rtol=1e-5)
        assert torch.equal(pooled.labels, labels)


def test_the_demo_saes_probe_their_classes_better_with_depth():
    model = HookedViT.from_pretrained("vit-sae-hooks/shapes-vit")
    train, test = next(shapes.batches(300, 1, seed=11)), next(shapes.batches(300, 1, seed=12))
    accuracies = {}
    for layer in (1, 3):
        sae = SAE.from_pretrained(f"vit-sae-hooks/shapes-vit/resid_post/{layer}")
        result = sparse_probing(model, sae, train[0], test[0], ks=(1, 5), train_labels=train[1], test_labels=test[1],
                                class_names=shapes.CLASSES, progress=False)
        assert result.tasks == list(shapes.CLASSES)
        accuracies[layer] = result.accuracy
        assert result.accuracy[5] >= result.accuracy[1] - 0.02 and result.baseline_accuracy >= result.accuracy[5] - 0.02
    assert accuracies[3][5] > 0.9 and accuracies[3][1] > accuracies[1][1] + 0.1


def test_bad_inputs_name_the_problem():
    fit, held_out = _planted(100, 0), _planted(100, 1)
    with pytest.raises(ConfigError, match="k=31 is more than"):
        probe_pooled(fit, held_out, ks=(1, 31))
    with pytest.raises(ConfigError, match="ks is empty"):
        probe_pooled(fit, held_out, ks=())
    with pytest.raises(ConfigError, match="'seven' is not a class name"):
        probe_pooled(fit, held_out, tasks=["seven"])
    unlabelled = PooledActivations(fit.features, fit.inputs, None, None)
    with pytest.raises(DataError, match="needs labelled images"):
        probe_pooled(unlabelled, held_out)
    one_class = PooledActivations(fit.features, fit.inputs, torch.zeros(100, dtype=torch.long), None)
    with pytest.raises(DataError, match="at least two classes"):
        probe_pooled(one_class, held_out)
    with pytest.raises(ConfigError, match="pooling='median'"):
        pooled_activations(None, SAE(SAEConfig(d_in=4, d_sae=8)), torch.zeros(1, 3, 8, 8), pooling="median")


def test_probe_command_reads_class_folders_and_prints_the_table(tmp_path, capsys):
    import json

    from vit_sae_hooks.cli import main

    for split, seed in (("train", 21), ("test", 22)):
        shapes.save_images(shapes.make_batch(150, seed=seed), tmp_path / split)
    args = ["probe", "--model", "vit-sae-hooks/shapes-vit", "--sae", "vit-sae-hooks/shapes-vit/resid_post/3",
            "--train", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--k", "1,3", "--num-workers", "0",
            "--tasks", "circle,ring", "--json", str(tmp_path / "probe.json"), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "probe.json").read_text())
    assert record["tasks"] == ["circle", "ring"] and set(record["accuracy"]) == {"1", "3"}
    assert f"| sparse, top 3 | 3 | {100 * record['accuracy']['3']:.1f} % |" in printed
    assert "2 one-against-rest tasks, mean over all tokens" in printed
    assert main([*args[:-5], "--tasks", "hexagon", "--quiet"]) == 2
    assert "'hexagon' is not a class name" in capsys.readouterr().err
