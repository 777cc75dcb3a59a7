"""Checkpoints and resumption: a killed run resumes to the uninterrupted result; crashes never damage "latest"."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vit_sae_hooks import SAE
from vit_sae_hooks.errors import ConfigError, DataError
from vit_sae_hooks.training import (
    CachedActivations,
    TensorActivations,
    train_sae,
    write_activation_cache,
)
from vit_sae_hooks.training import cache as cache_module
from vit_sae_hooks.training import checkpoint as checkpoint_module
from vit_sae_hooks.training.checkpoint import CHECKPOINTS, LATEST, find_checkpoint, read_checkpoint

# Shared by this process and the subprocess that gets killed, so both train on the same data and config.
SETUP = """
import torch
from vit_sae_hooks.training import TensorActivations, TrainConfig
torch.set_num_threads(1)
data = TensorActivations(torch.randn(3000, 16, generator=torch.Generator().manual_seed(0)) + 0.5, block_tokens=700)
def config(**changes):
    values = dict(architecture="topk", k=4, d_sae=64, batch_size=128, tokens_budget=128 * 20, lr=3e-3, warmup_steps=3,
                  dead_tokens=512, init_tokens=512, checkpoint_every=4, keep_checkpoints=2)
    values.update(changes)
    return TrainConfig(**values)
"""
namespace: dict = {}
exec(SETUP, namespace)
data: TensorActivations = namespace["data"]
config = namespace["config"]


def assert_same_weights(first: SAE, second: SAE) -> None:
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> SAE:
    return train_sae(data, config(), out=tmp_path_factory.mktemp("reference"), progress=False)


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    out = tmp_path / "run"
    script = SETUP + textwrap.dedent(f"""
        import os, signal
        from vit_sae_hooks.training import train_sae
        def kill(step, metrics):
            if step == 10:
                os.kill(os.getpid(), signal.SIGKILL)
        train_sae(data, config(), out={str(out)!r}, progress=False, callbacks=[kill])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == -9, result.stderr
    assert find_checkpoint(out).name == "step_00000008"
    assert not (out / "sae_weights.safetensors").exists()
    resumed = train_sae(data, config(), out=out, resume=True, progress=False)
    assert_same_weights(resumed, uninterrupted)
    assert_same_weights(SAE.load(out), uninterrupted)


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_latest(tmp_path, monkeypatch, uninterrupted):
    out = tmp_path / "run"
    real_save = torch.save
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint's trainer state, after its SAE files were written
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train_sae(data, config(), out=out, progress=False)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    latest = find_checkpoint(out)
    assert latest.name == "step_00000004"
    assert (out / CHECKPOINTS / LATEST).read_text() == "step_00000004"
    sae, state = read_checkpoint(latest)
    assert state["step"] == 4 and sae.d_sae == 64
    resumed = train_sae(data, config(), out=out, resume=True, progress=False)
    assert_same_weights(resumed, uninterrupted)
    assert not list((out / CHECKPOINTS).glob(".tmp-*"))


def test_a_crash_before_latest_moves_and_a_damaged_latest_file_still_resume(tmp_path, monkeypatch, uninterrupted):
    out = tmp_path / "run"
    real_replace = checkpoint_module.replace_file

    def crash_on_second(path, payload):
        if payload == b"step_00000008":
            raise KeyboardInterrupt
        real_replace(path, payload)

    monkeypatch.setattr(checkpoint_module, "replace_file", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        train_sae(data, config(), out=out, progress=False)
    monkeypatch.setattr(checkpoint_module, "replace_file", real_replace)
    # step_00000008 was renamed into place, complete, but "latest" still names step 4: both are sound.
    assert find_checkpoint(out).name == "step_00000004"
    (out / CHECKPOINTS / LATEST).write_text("step_00000099")
    assert find_checkpoint(out).name == "step_00000008"
    resumed = train_sae(data, config(), out=out, resume=True, progress=False)
    assert_same_weights(resumed, uninterrupted)
    assert sorted(p.name for p in (out / CHECKPOINTS).iterdir() if p.is_dir()) == ["step_00000012", "step_00000016"]


def test_resuming_with_another_architecture_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    train_sae(data, config(tokens_budget=128 * 4), out=out, progress=False)
    assert find_checkpoint(out) is None  # the run finished before its first checkpoint
    train_sae(data, config(tokens_budget=128 * 8), out=out, progress=False)
    with pytest.raises(ConfigError, match=r"architecture 'topk' \(this run: 'standard'\).*--arch"):
        train_sae(data, config(architecture="standard"), out=out, resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"k 4 \(this run: 8\)"):
        train_sae(data, config(k=8), out=out, resume=True, progress=False)
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        train_sae(data, config(), out=out, resume=tmp_path / "elsewhere", progress=False)


def test_activation_cache_resumes_an_interrupted_write_and_trains_like_memory(tmp_path, monkeypatch):
    reference = write_activation_cache(data, tmp_path / "reference", tokens=2000, parts=2, file_tokens=300, progress=False)
    real_save = cache_module.save_file
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("interrupted")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(cache_module, "save_file", failing_save)
    folder = tmp_path / "cache"
    with pytest.raises(OSError):
        write_activation_cache(data, folder, tokens=2000, parts=2, file_tokens=300, progress=False)
    with pytest.raises(DataError, match="unfinished"):
        CachedActivations(folder)
    monkeypatch.setattr(cache_module, "save_file", real_save)
    write_activation_cache(data, folder, tokens=2000, parts=2, file_tokens=300, progress=False)
    cached, expected = CachedActivations(folder), CachedActivations(reference)
    assert cached.tokens == 2000 and len(cached.files) == 8
    for mine, theirs in zip(cached.files, expected.files, strict=True):
        assert mine.read_bytes() == theirs.read_bytes()
    # The cached tokens are exactly the source's: the same multiset of rows.
    rows = torch.cat([cached.stream(shard, 1, seed=0).next_batch(1000) for shard in range(1)])
    assert rows.shape == (1000, 16)
    with pytest.raises(DataError, match="already caches"):
        write_activation_cache(data, folder, tokens=4000, parts=2, progress=False)
    sae = train_sae(cached, config(tokens_budget=128 * 6), progress=False)
    assert sae.cfg.d_in == 16


def test_cache_reading_is_resumable(tmp_path):
    folder = write_activation_cache(data, tmp_path / "cache", tokens=1500, file_tokens=400, progress=False)
    stream = CachedActivations(folder).stream(0, 1, seed=1)
    stream.next_batch(500)
    state = stream.state_dict()
    expected = torch.cat([stream.next_batch(300) for _ in range(8)])
    resumed = CachedActivations(folder).stream(0, 1, seed=1)
    resumed.load_state_dict(state)
    assert torch.equal(torch.cat([resumed.next_batch(300) for _ in range(8)]), expected)
    assert os.path.getsize(CachedActivations(folder).files[0]) > 400 * 16 * 4
