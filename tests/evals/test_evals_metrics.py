"""Every metric accumulator against a float64 hand computation, fed in uneven batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vit_sae_hooks.evals import DownstreamStats, ReconstructionStats, ce_recovered_pct


def hand_reconstruction_metrics(x, x_hat, acts, is_cls, image_of_row, batches, threshold):
    """Straight from the definitions in docs/metrics.md, with numpy float64 loops."""
    x, x_hat, acts = (np.asarray(t, dtype=np.float64) for t in (x, x_hat, acts))
    n, d = x.shape
    error = ((x - x_hat) ** 2).sum(1)
    mean = x.mean(0)
    per_batch = []
    for rows in batches:
        batch_mean = x[rows].mean(0)
        per_batch += [1 - error[t] / ((x[t] - batch_mean) ** 2).sum() for t in rows]
    cos = [x[t] @ x_hat[t] / (np.linalg.norm(x[t]) * np.linalg.norm(x_hat[t])) for t in range(n)]
    columns = [x[:, j] @ x_hat[:, j] / (np.linalg.norm(x[:, j]) * np.linalg.norm(x_hat[:, j])) for j in range(d)]
    l0 = (acts != 0).sum(1)
    fires = (acts != 0).any(0)
    images_fired = np.zeros(acts.shape[1])
    for image in set(image_of_row):
        rows = [t for t in range(n) if image_of_row[t] == image and is_cls[t]]
        images_fired += (acts[rows] != 0).any(0)
    return {
        "explained_variance_pct": 100 * (1 - error.sum() / ((x - mean) ** 2).sum()),
        "explained_variance_per_batch_pct": 100 * np.mean(per_batch),
        "explained_variance": np.mean([1 - error[t] / ((x[t] - x[t].mean()) ** 2).sum() for t in range(n)]),
        "mse": error.mean(),
        "cos_sim": np.mean(cos),
        "cos_sim_columns": np.mean(columns),
        "avg_l0": l0.mean(),
        "avg_cls_l0": l0[is_cls].mean(),
        "avg_patch_l0": l0[~is_cls].mean(),
        "alive_features_pct": 100 * fires.mean(),
        "dead_feature_proportion": 1 - fires.mean(),
        "active_feature_proportion": (images_fired >= threshold).mean(),
    }


@pytest.mark.parametrize("sparse", [False, True])
def test_reconstruction_metrics_match_hand_computation(sparse):
    generator = torch.Generator().manual_seed(0)
    n_images, n_pos, d, d_sae, k = 7, 3, 5, 12, 3
    n = n_images * n_pos
    # A large common offset, as residual streams have: the dataset variance must not lose it to cancellation.
    x = torch.randn(n, d, generator=generator, dtype=torch.float64) + 50.0
    x_hat = x + 0.3 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    pre = torch.randn(n, d_sae, generator=generator)
    values, indices = pre.topk(k, dim=-1)
    values = values.relu()  # some top-k values are 0: they must not count as firing
    acts = torch.zeros(n, d_sae).scatter(-1, indices, values)
    image_of_row = torch.arange(n_images).repeat_interleave(n_pos)
    is_cls = torch.arange(n) % n_pos == 0
    stats = ReconstructionStats(d_sae, active_image_threshold=2)
    batches, start = [], 0
    for n_batch_images in (3, 1, 3):  # uneven batches
        rows = slice(start * n_pos, (start + n_batch_images) * n_pos)
        fired = (indices[rows], values[rows] != 0) if sparse else acts[rows] != 0
        stats.update(x[rows].float(), x_hat[rows].float(), fired, is_cls[rows], image_of_row[rows] - start, n_batch_images)
        batches.append(list(range(n))[rows])
        start += n_batch_images
    # The accumulators see float32 inputs, as from a float32 model; the reference uses the same rounded values.
    expected = hand_reconstruction_metrics(
        x.float(), x_hat.float(), acts, is_cls.numpy(), image_of_row.tolist(), batches, threshold=2
    )
    got = stats.compute()
    for name, value in expected.items():
        assert got[name] == pytest.approx(float(value), rel=1e-9, abs=1e-12), name
    assert stats.n_tokens == n and stats.n_images == n_images


def test_reconstruction_without_cls_tokens_reports_none_for_cls_l0():
    stats = ReconstructionStats(d_sae=4)
    x = torch.randn(6, 3)
    stats.update(x, x, torch.ones(6, 4, dtype=torch.bool), torch.zeros(6, dtype=torch.bool), torch.arange(6), 6)
    got = stats.compute()
    assert got["avg_cls_l0"] is None and got["avg_patch_l0"] == 4
    assert got["explained_variance_pct"] == 100 and got["mse"] == 0
    with pytest.raises(ValueError, match="no tokens"):
        ReconstructionStats(d_sae=4).compute()


def test_downstream_metrics_match_hand_computation():
    generator = torch.Generator().manual_seed(3)
    n, d_out, n_classes = 9, 6, 4
    out, out_recon = torch.randn(2, n, d_out, generator=generator, dtype=torch.float64)
    logits, logits_recon, logits_zero = torch.randn(3, n, n_classes, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, n_classes, (n,), generator=generator)
    labels[4] = -1  # unlabelled: left out of the cross-entropies, kept in KL and cosines
    stats = DownstreamStats()
    for rows in (slice(0, 2), slice(2, 7), slice(7, 9)):
        stats.update(out[rows], out_recon[rows], logits[rows], logits_recon[rows], logits_zero[rows], labels[rows])
    got = stats.compute()

    def ce(z):
        return np.mean([math.log(np.exp(z[i]).sum()) - z[i, labels[i]] for i in range(n) if labels[i] >= 0])

    def kl(z_p, z_q):
        p = np.exp(z_p) / np.exp(z_p).sum(1, keepdims=True)
        q = np.exp(z_q) / np.exp(z_q).sum(1, keepdims=True)
        return np.mean((p * np.log(p / q)).sum(1))

    o, r = out.numpy(), out_recon.numpy()
    z, zr, zz = logits.numpy(), logits_recon.numpy(), logits_zero.numpy()
    expected = {
        "recon_cos_sim": np.mean([o[i] @ r[i] / np.linalg.norm(o[i]) / np.linalg.norm(r[i]) for i in range(n)]),
        "ce": ce(z), "recon_ce": ce(zr), "zero_abl_ce": ce(zz),
        "kl_div": kl(z, zr), "kl_div_zero_abl": kl(z, zz),
        "accuracy": np.mean([z[i].argmax() == labels[i] for i in range(n) if labels[i] >= 0]),
    }
    zero, recon, clean = expected["zero_abl_ce"], expected["recon_ce"], expected["ce"]
    expected["ce_recovered_pct"] = 100 * (zero - recon) / (zero - clean)
    for name, value in expected.items():
        assert got[name] == pytest.approx(float(value), rel=1e-10), name
    assert stats.n_labelled == n - 1


def test_downstream_without_logits_or_labels():
    stats = DownstreamStats()
    out = torch.randn(3, 4)
    stats.update(out, out)
    got = stats.compute()
    assert got["recon_cos_sim"] == pytest.approx(1.0)
    assert got["ce"] is None and got["kl_div"] is None and got["ce_recovered_pct"] is None


def test_ce_recovered_pct():
    assert ce_recovered_pct(6.762, 6.763, 6.908) == pytest.approx(100 * 0.145 / 0.146)
    assert ce_recovered_pct(1.0, 1.0, 1.0) is None
    assert ce_recovered_pct(None, 1.0, 2.0) is None
