"""`vit-sae train` end to end on a tiny model and image folder: DDP with 2 gloo processes, bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig
from vit_sae_hooks.cli import main as vit_sae

ARGS = [
    "--hook", "blocks.0.hook_resid_post", "--tokens-budget", "1200", "--batch-size", "120", "--expansion", "2",
    "--k", "4", "--held-out", "4", "--workers", "0", "--buffer-images", "6", "--image-batch-size", "4",
    "--checkpoint-every", "4", "--quiet",
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> tuple[Path, Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    cfg = HookedViTConfig(
        n_layers=2, d_model=32, n_heads=4, d_mlp=64, image_size=16, patch_size=8, ln_pre=True,
        act_fn="quick_gelu", head_type="linear", d_output=16, model_name="tiny",
    )
    model_folder = HookedViT(cfg).save_pretrained(root / "model")
    images = root / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (40, 20, 20, 3), dtype=np.uint8)
    for index, image in enumerate(pixels):
        Image.fromarray(image).save(images / f"{index:03d}.png")
    return model_folder, images


def run_module(args: list[str], launcher: list[str]) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, *launcher, "-m", "vit_sae_hooks.training", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, check=False)


def test_two_gloo_processes_train_the_same_sae_as_one_process_on_the_same_shards(assets, tmp_path):
    model, images = assets
    common = ["--model", str(model), "--images", str(images), *ARGS]
    ddp = run_module([*common, "--out", str(tmp_path / "ddp")],
                     ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_module([*common, "--data-shards", "2", "--out", str(tmp_path / "single")], [])
    assert single.returncode == 0, single.stderr[-3000:]
    assert "% Explained var." in single.stdout and "blocks.0.hook_resid_post" in single.stdout
    from_ddp, from_single = SAE.load(tmp_path / "ddp"), SAE.load(tmp_path / "single")
    assert from_ddp.cfg == from_single.cfg
    for name, tensor in from_single.state_dict().items():
        # Same batches and initialisation; only the order of floating-point sums differs.
        assert torch.allclose(from_ddp.state_dict()[name], tensor, atol=1e-5), name
    assert (tmp_path / "ddp" / "checkpoints" / "latest").read_text() == "step_00000008"


def test_train_command_writes_an_sae_trains_from_its_cache_and_reports_bad_inputs(assets, tmp_path, capsys):
    model, images = assets
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    base = ["train", "--model", str(model), *ARGS]
    assert vit_sae([*base, "--images", str(images), "--out", str(out), "--cache-activations", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert "saved a topk SAE (32 -> 64 latents" in printed and "% Explained var." in printed
    sae = SAE.load(out)
    assert (sae.hook_name, sae.token_set, sae.cfg.k) == ("blocks.0.hook_resid_post", "all", 4)
    # A finished cache is reused without images.
    assert vit_sae([*base, "--cache-activations", str(cache), "--out", str(tmp_path / "again")]) == 0
    assert "no held-out images" in capsys.readouterr().out

    wrong_hook = [arg if arg != "blocks.0.hook_resid_post" else "blocks.7.hook_resid_post" for arg in base]
    assert vit_sae([*wrong_hook, "--images", str(images), "--out", str(tmp_path / "x")]) == 2
    assert "hook 'blocks.7.hook_resid_post' does not exist; this model has blocks 0-1" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert vit_sae([*base, "--images", str(empty), "--out", str(tmp_path / "y")]) == 2
    assert "no images found" in capsys.readouterr().err

    assert vit_sae([*base, "--arch", "relu", "--images", str(images), "--out", str(out), "--resume"]) == 2
    error = capsys.readouterr().err
    assert "cannot resume" in error and "architecture 'topk' (this run: 'standard')" in error

    assert vit_sae([*base, "--cache-activations", str(cache), "--tokens", "cls", "--out", str(tmp_path / "z")]) == 2
    assert "use another --cache-activations folder" in capsys.readouterr().err


def test_one_command_trains_several_saes_and_transcoders_from_one_pass(assets, tmp_path, capsys):
    model, images = assets
    out = tmp_path / "sweep"
    args = ["train", "--model", str(model), *ARGS, "--k", "2,4", "--arch", "topk,batchtopk",
            "--hook", "blocks.1.hook_resid_post", "--images", str(images), "--out", str(out)]
    assert vit_sae(args) == 0
    printed = capsys.readouterr().out
    names = sorted(path.name for path in out.iterdir())
    hooks = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
    assert names == sorted(f"{hook}-{arch}-k{k}" for hook in hooks for arch in ("batchtopk", "topk") for k in (2, 4))
    for name in names:
        sae = SAE.load(out / name)
        hook, arch, k = name.split("-")
        assert (sae.hook_name, sae.cfg.architecture, sae.cfg.k) == (hook, arch, int(k[1:]))
        assert f"| {name} |" in printed
    assert "SAELens would load" not in printed  # SAELens computes the same features for these

    transcoder_out = tmp_path / "transcoder"
    args = ["train", "--model", str(model), *ARGS, "--arch", "transcoder", "--hook-in", "blocks.1.ln2.hook_normalized",
            "--hook-out", "blocks.1.hook_mlp_out", "--skip-connection", "--images", str(images), "--out",
            str(transcoder_out)]
    assert vit_sae(args[:2] + args[2:4] + args[4:]) == 2
    assert "one --hook-out per --hook" in capsys.readouterr().err
    args = [arg for arg in args if arg != "blocks.0.hook_resid_post"]
    args.remove("--hook")
    assert vit_sae(args) == 0
    printed = capsys.readouterr().out
    assert "saved a topk transcoder" in printed and "blocks.1.ln2.hook_normalized -> blocks.1.hook_mlp_out" in printed
    assert "SAELens would load the folder but compute other features, since it is a topk transcoder" in printed
    transcoder = SAE.load(transcoder_out)
    assert transcoder.is_transcoder and transcoder.cfg.skip_connection
    assert (transcoder.hook_name, transcoder.hook_name_out) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")

    matryoshka = ["train", "--model", str(model), *ARGS, "--arch", "matryoshka", "--prefixes", "8,24",
                  "--images", str(images), "--out", str(tmp_path / "m")]
    assert vit_sae(matryoshka) == 0
    printed = capsys.readouterr().out
    assert SAE.load(tmp_path / "m").cfg.prefixes == (8, 24, 64)
    assert "| m[:8] |" in printed and "| m[:24] |" in printed
    assert vit_sae([*matryoshka[:-2], "--out", str(tmp_path / "n"), "--prefixes", "24,8"]) == 2
    assert "strictly increasing" in capsys.readouterr().err


def test_every_train_config_field_is_an_option_with_help_that_round_trips():
    import argparse
    import dataclasses

    from vit_sae_hooks.cli_support import configs_from_args
    from vit_sae_hooks.training import TrainConfig
    from vit_sae_hooks.training.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    train = parser._subparsers._group_actions[0].choices["train"]
    options = {action.dest: action for action in train._actions}
    from_hooks = {"hook_name", "hook_name_out"}  # given by --hook / --hook-out
    for field in dataclasses.fields(TrainConfig):
        if field.name in from_hooks:
            continue
        assert field.name in options, f"TrainConfig.{field.name} has no vit-sae train option"
        assert options[field.name].help and options[field.name].help.strip(), field.name
    argv = ["train", "--model", "m", "--images", "i", "--out", "o", "--hook", "blocks.0.hook_resid_post",
            "--k-aux", "128", "--grad-clip", "0.5", "--jumprelu-bandwidth", "0.01", "--expansion-factor", "4,8"]
    args = parser.parse_args(argv)
    configs = configs_from_args(TrainConfig, args, hook_name="blocks.0.hook_resid_post")
    assert [config.expansion_factor for config in configs] == [4, 8]
    assert all(config.k_aux == 128 and config.grad_clip == 0.5 and config.jumprelu_bandwidth == 0.01
               for config in configs)
