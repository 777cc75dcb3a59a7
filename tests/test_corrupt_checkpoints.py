"""Damaged checkpoints of the shipped model and SAE: every load either works or raises a library error that
names the damaged file, never a raw Python, JSON, safetensors or torch error.

Hypothesis draws the damage: truncation, bit flips, JSON values of the wrong type, removed keys, invalid JSON
or UTF-8, tensors of the wrong shape or dtype, missing and extra tensors, NaN weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from vit_sae_hooks import SAE, HookedViT
from vit_sae_hooks.errors import VitSaeHooksError
from vit_sae_hooks.hub import ASSETS

MODEL = ASSETS / "shapes-vit"
SAE_FOLDER = MODEL / "resid_post" / "2"
MODEL_FILES = ("hooked_vit_config.json", "model.safetensors")
SAE_FILES = ("cfg.json", "sae_weights.safetensors")
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True), st.text(max_size=8),
    st.lists(st.integers(-2, 4), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _truncate(data: bytes, draw) -> bytes:
    return data[: draw(st.integers(0, len(data) - 1))]


def _flip_bits(data: bytes, draw) -> bytes:
    damaged = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        # Half the flips land in the first kilobyte, where the JSON and safetensors headers live.
        limit = min(len(damaged), 1024) if draw(st.booleans()) else len(damaged)
        position = draw(st.integers(0, limit - 1))
        damaged[position] ^= 1 << draw(st.integers(0, 7))
    return bytes(damaged)


def _damage_json(path: Path, draw) -> None:
    kind = draw(st.sampled_from(["value", "value", "value", "remove", "invalid", "not-utf8", "not-object"]))
    if kind == "invalid":
        path.write_text(path.read_text()[: -draw(st.integers(1, 20))])
    elif kind == "not-utf8":
        path.write_bytes(b"\xff\xfe" + path.read_bytes())
    elif kind == "not-object":
        path.write_text(json.dumps(draw(st.lists(st.integers(), max_size=3))))
    else:
        values = json.loads(path.read_text())
        key = draw(st.sampled_from(sorted(values)))
        if kind == "remove":
            del values[key]
        else:
            values[key] = draw(JSON_VALUES)
        path.write_text(json.dumps(values))


def _damage_tensors(path: Path, draw) -> None:
    tensors = load_file(path)
    key = draw(st.sampled_from(sorted(tensors)))
    kind = draw(st.sampled_from(["shape", "int32", "float16", "remove", "extra", "nan"]))
    tensor = tensors[key]
    if kind == "shape":
        tensors[key] = torch.zeros(tensor.numel() + draw(st.integers(1, 5)))
    elif kind == "int32":
        tensors[key] = tensor.to(torch.int32)
    elif kind == "float16":
        tensors[key] = tensor.to(torch.float16)
    elif kind == "remove":
        del tensors[key]
    elif kind == "extra":
        tensors["surprise"] = torch.zeros(3)
    else:
        tensors[key] = tensor.clone().flatten().index_fill(0, torch.tensor([0]), float("nan")).view_as(tensor)
    save_file(tensors, path)


def _damage(folder: Path, files: tuple[str, ...], draw) -> Path:
    name = draw(st.sampled_from(files))
    path = folder / name
    # Structured damage (a value of the wrong type, a tensor of the wrong shape) is what parsers let through, so
    # it gets most of the examples; truncation and bit flips mostly fail early in the file formats themselves.
    kind = draw(st.sampled_from(["truncate", "flip", "structured", "structured", "structured", "structured"]))
    if kind == "truncate":
        path.write_bytes(_truncate(path.read_bytes(), draw))
    elif kind == "flip":
        path.write_bytes(_flip_bits(path.read_bytes(), draw))
    elif name.endswith(".json"):
        _damage_json(path, draw)
    else:
        _damage_tensors(path, draw)
    return path


def _check_loads_or_names_the_file(load, folder: Path, damaged: Path, run) -> None:
    try:
        loaded = load(folder)
    except VitSaeHooksError as error:
        assert str(damaged.parent) in str(error) or damaged.name in str(error), f"{type(error).__name__}: {error}"
        return
    # A load that succeeds (a flipped bit in a float's mantissa, a float16 copy) must give a working object.
    run(loaded)


def _copy_model(parent: Path) -> Path:
    return Path(shutil.copytree(MODEL, parent / "shapes-vit", ignore=shutil.ignore_patterns("resid_post")))


CORRUPTION = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@CORRUPTION
@given(data=st.data())
def test_a_damaged_model_checkpoint_loads_or_names_the_file(tmp_path_factory: pytest.TempPathFactory, data) -> None:
    folder = _copy_model(tmp_path_factory.mktemp("model"))
    damaged = _damage(folder, MODEL_FILES, data.draw)

    def run(model: HookedViT) -> None:
        with torch.no_grad():
            model(torch.zeros(1, model.cfg.n_channels, *model.cfg.image_size))

    _check_loads_or_names_the_file(HookedViT.from_pretrained, folder, damaged, run)


@CORRUPTION
@given(data=st.data())
def test_a_damaged_sae_checkpoint_loads_or_names_the_file(tmp_path_factory: pytest.TempPathFactory, data) -> None:
    folder = Path(shutil.copytree(SAE_FOLDER, tmp_path_factory.mktemp("sae") / "sae"))
    damaged = _damage(folder, SAE_FILES, data.draw)

    def run(sae: SAE) -> None:
        with torch.no_grad():
            sae(torch.zeros(2, sae.d_in))

    _check_loads_or_names_the_file(SAE.load, folder, damaged, run)


def test_an_int32_weight_in_the_model_is_refused_by_name(tmp_path: Path) -> None:
    folder = _copy_model(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["blocks.0.attn.W_Q"] = tensors["blocks.0.attn.W_Q"].to(torch.int32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(VitSaeHooksError, match=r"model\.safetensors.*'blocks\.0\.attn\.W_Q' is torch\.int32"):
        HookedViT.from_pretrained(folder)


def test_a_wrong_shape_in_the_model_is_refused_by_name(tmp_path: Path) -> None:
    folder = _copy_model(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["blocks.1.mlp.W_in"] = tensors["blocks.1.mlp.W_in"][:, :-1].contiguous()
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(VitSaeHooksError, match=r"model\.safetensors.*'blocks\.1\.mlp\.W_in' has shape"):
        HookedViT.from_pretrained(folder)


def test_a_config_value_of_the_wrong_type_is_refused_by_name(tmp_path: Path) -> None:
    folder = _copy_model(tmp_path)
    config = json.loads((folder / "hooked_vit_config.json").read_text())
    config["n_heads"] = "four"
    (folder / "hooked_vit_config.json").write_text(json.dumps(config))
    with pytest.raises(VitSaeHooksError, match=r"hooked_vit_config\.json.*n_heads must be a positive integer, got 'four'"):
        HookedViT.from_pretrained(folder)
