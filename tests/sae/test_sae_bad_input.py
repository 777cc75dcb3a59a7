"""Bad checkpoints: truncated or corrupt files, wrong shapes, missing keys, unknown architectures and pickles
carrying code. Each must raise a library error naming the file, execute nothing and load nothing."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vit_sae_hooks.errors import CheckpointFormatError, ConfigError, ResolutionError, VitSaeHooksError
from vit_sae_hooks.sae import SAE, SAEConfig

from helpers import FIXTURES


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / Path(name).name))


def truncate(path: Path, keep_fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


@pytest.mark.parametrize(
    "fixture, damaged_file",
    [
        ("saelens_topk", "sae_weights.safetensors"),
        ("sparsify_topk/layers.3", "sae.safetensors"),
        ("prisma_relu_layernorm", "weights.pt"),
        ("clipscope_topk/3_resid", "1000.pt"),
    ],
)
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_weights_file_is_reported_by_name(fixture: str, damaged_file: str, damage: str, tmp_path: Path) -> None:
    folder = copy_fixture(fixture, tmp_path)
    target = folder / damaged_file
    if damage == "truncated":
        truncate(target)
    elif damage == "garbage":
        target.write_bytes(b"\x00\x01 not a checkpoint " * 50)
    else:
        target.write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match=damaged_file.replace(".", r"\.")) as error:
        SAE.load(folder)
    assert "corrupt" in str(error.value) or "truncated" in str(error.value)


@pytest.mark.parametrize(
    "fixture, config_file",
    [("saelens_standard", "cfg.json"), ("sparsify_topk/layers.3", "cfg.json"), ("prisma_topk_none", "config.json")],
)
def test_corrupt_config_json_is_reported_with_its_position(fixture: str, config_file: str, tmp_path: Path) -> None:
    folder = copy_fixture(fixture, tmp_path)
    truncate(folder / config_file, 0.6)
    with pytest.raises(CheckpointFormatError, match=rf"{config_file}.*not valid JSON \(line \d+, column \d+"):
        SAE.load(folder)


def saelens_with(
    tmp_path: Path, source: str = "saelens_standard", config_changes: dict | None = None, tensor_changes=None
) -> Path:
    folder = copy_fixture(source, tmp_path)
    config = json.loads((folder / "cfg.json").read_text()) | (config_changes or {})
    (folder / "cfg.json").write_text(json.dumps(config))
    if tensor_changes is not None:
        tensors = load_file(folder / "sae_weights.safetensors")
        tensor_changes(tensors)
        save_file(tensors, folder / "sae_weights.safetensors")
    return folder


def test_d_in_that_does_not_match_the_config_is_reported(tmp_path: Path) -> None:
    folder = saelens_with(tmp_path, config_changes={"d_in": 32})
    expected = r"sae_weights\.safetensors.*W_enc has shape \[64, 256\] but the config \(d_in=32, d_sae=256\) needs \[32, 256\]"
    with pytest.raises(CheckpointFormatError, match=expected):
        SAE.load(folder)


def test_transposed_weights_are_reported(tmp_path: Path) -> None:
    def transpose(tensors: dict) -> None:
        tensors["W_dec"] = tensors["W_dec"].T.contiguous()

    with pytest.raises(CheckpointFormatError, match=r"W_dec has shape \[64, 256\].*needs \[256, 64\]"):
        SAE.load(saelens_with(tmp_path, tensor_changes=transpose))


def test_missing_and_unexpected_parameters_are_all_listed(tmp_path: Path) -> None:
    def damage(tensors: dict) -> None:
        del tensors["b_dec"]
        tensors["W_skip"] = torch.zeros(3)

    with pytest.raises(CheckpointFormatError, match=r"missing parameters \['b_dec'\]; unexpected parameters \['W_skip'\]"):
        SAE.load(saelens_with(tmp_path, tensor_changes=damage))


def test_jumprelu_without_threshold_is_reported(tmp_path: Path) -> None:
    folder = saelens_with(tmp_path, "saelens_jumprelu", tensor_changes=lambda tensors: tensors.pop("threshold"))
    with pytest.raises(CheckpointFormatError, match=r"missing parameters \['threshold'\]"):
        SAE.load(folder)


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"architecture": "gated"}, CheckpointFormatError, "a gated SAE needs 'b_mag'"),
        ({"architecture": "hyperbolic"}, ConfigError, "architecture 'hyperbolic' is not supported"),
        ({"activation_fn": "tanh-relu", "metadata": {}}, ConfigError, "activation function 'tanh-relu'"),
        ({"normalize_activations": "batch_norm"}, ConfigError, "normalize_activations 'batch_norm'"),
        ({"reshape_activations": "hook_z"}, ConfigError, "hook_z"),
        ({"architecture": "topk"}, CheckpointFormatError, "needs 'k'"),
        ({"d_sae": "256"}, CheckpointFormatError, "'d_sae' is '256', expected an integer"),
        ({"metadata": ["not", "an", "object"]}, CheckpointFormatError, "'metadata' is"),
    ],
)
def test_unsupported_or_malformed_saelens_configs(tmp_path: Path, changes: dict, error: type, message: str) -> None:
    folder = saelens_with(tmp_path, config_changes=changes)
    with pytest.raises(error, match=message) as raised:
        SAE.load(folder)
    assert "cfg.json" in str(raised.value)


def test_missing_config_key_is_reported(tmp_path: Path) -> None:
    folder = copy_fixture("saelens_standard", tmp_path)
    config = json.loads((folder / "cfg.json").read_text())
    del config["d_in"]
    (folder / "cfg.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointFormatError, match=r"cfg\.json has no 'd_in' entry"):
        SAE.load(folder)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"activation_fn_str": "tanh-relu"}, "activation_fn_str 'tanh-relu'"),
        ({"architecture": "jumprelu"}, "Prisma architecture 'jumprelu'"),
        ({"architecture": "gated", "is_transcoder": True}, "transcoder with architecture 'gated'"),
        ({"architecture": "gated", "activation_fn_str": "topk"}, "gated SAE with activation_fn_str 'topk'"),
        ({"cls_token_only": True, "use_patches_only": True}, "both set"),
        ({"normalize_activations": "whiten"}, "normalize_activations 'whiten'"),
    ],
)
def test_unsupported_prisma_configs(tmp_path: Path, changes: dict, message: str) -> None:
    folder = copy_fixture("prisma_relu_none", tmp_path)
    config = json.loads((folder / "config.json").read_text()) | changes
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        SAE.load(folder)


@pytest.mark.parametrize("flag", ["transcode", "skip_connection"])
def test_unsupported_sparsify_options(tmp_path: Path, flag: str) -> None:
    folder = copy_fixture("sparsify_topk/layers.3", tmp_path)
    config = json.loads((folder / "cfg.json").read_text()) | {flag: True}
    (folder / "cfg.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=f"{flag}=true is not supported"):
        SAE.load(folder)


def test_clipscope_with_wrong_shapes_is_reported(tmp_path: Path) -> None:
    checkpoint = torch.load(FIXTURES / "clipscope_topk/3_resid/1000.pt", weights_only=True)
    checkpoint["d_in"] = 128
    torch.save(checkpoint, tmp_path / "7.pt")
    with pytest.raises(CheckpointFormatError, match=r"7\.pt.*W_enc has shape \[64, 256\].*needs \[128, 256\]"):
        SAE.load(tmp_path / "7.pt")


def test_unknown_files_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ResolutionError, match="does not exist"):
        SAE.load(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointFormatError, match="no SAE checkpoint found"):
        SAE.load(tmp_path)
    with pytest.raises(CheckpointFormatError, match="not a file of any supported SAE layout"):
        SAE.load(tmp_path / "notes.txt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointFormatError, match=r"other\.pt is a torch checkpoint of no supported SAE layout"):
        SAE.load(tmp_path / "other.pt")


def test_from_state_dict_checks_before_building(tmp_path: Path) -> None:
    config = SAEConfig(d_in=4, d_sae=8)
    state = SAE(config).state_dict() | {"W_enc": torch.zeros(8, 4)}
    with pytest.raises(CheckpointFormatError, match=r"the given state_dict.*W_enc has shape \[8, 4\]"):
        SAE.from_state_dict(config, state)


# ---- pickles that try to run code or smuggle in other classes ----


class _RunsCode:
    """Pickles as a call to exec(); unpickling it for real would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('executed')",))


class _CallsSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _fake_prisma_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in ``vit_prisma.sae.config`` so test pickles can name classes there without vit_prisma installed."""
    module = types.ModuleType("vit_prisma.sae.config")
    for name in ("vit_prisma", "vit_prisma.sae", "vit_prisma.sae.config"):
        monkeypatch.setitem(sys.modules, name, module if name.endswith("config") else types.ModuleType(name))
    return module


def load_state_dict_of_fixture() -> dict[str, torch.Tensor]:
    return SAE.load(FIXTURES / "prisma_topk_none").state_dict()


@pytest.mark.parametrize("payload", [_RunsCode, _CallsSystem])
@pytest.mark.parametrize("where", ["cfg", "state_dict_entry", "top_level"])
def test_pickled_code_is_refused_and_never_runs(payload: type, where: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = payload(marker)
    state_dict = load_state_dict_of_fixture()
    content = {
        "cfg": {"cfg": evil, "state_dict": state_dict},
        "state_dict_entry": {"state_dict": state_dict | {"W_enc": evil}},
        "top_level": evil,
    }[where]
    path = tmp_path / "weights.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointFormatError, match=r"weights\.pt contains pickled objects.*nothing in it was executed") as error:
        SAE.load(path)
    assert not marker.exists()
    assert "weights_only=False" not in str(error.value), "never advise the unsafe route"


def _checkpoint_with_prisma_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, **methods) -> Path:
    """A Prisma-shaped weights.pt whose cfg is an instance of class ``vit_prisma.sae.config.<name>``."""
    module = _fake_prisma_module(monkeypatch)
    cls = type(name, (), methods)
    cls.__module__ = "vit_prisma.sae.config"
    setattr(module, name, cls)
    path = tmp_path / "weights.pt"
    torch.save({"cfg": cls(), "state_dict": load_state_dict_of_fixture()}, path)
    return path


def test_other_class_from_the_prisma_module_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real vit_prisma class name, but not the one config class that is admitted.
    path = _checkpoint_with_prisma_class(tmp_path, monkeypatch, "SAETrainingRunner")
    with pytest.raises(CheckpointFormatError, match="SAETrainingRunner"):
        SAE.load(path)


@pytest.mark.parametrize("state", [{"d_in": torch.zeros(3)}, ["not", "a", "dict"], {"nested": {"k": object}}])
def test_prisma_config_class_with_non_plain_state_is_refused(state, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _checkpoint_with_prisma_class(
        tmp_path, monkeypatch, "VisionModelSAERunnerConfig", __getstate__=lambda self: state
    )
    with pytest.raises(CheckpointFormatError, match=r"weights\.pt contains pickled objects"):
        SAE.load(path)


def test_prisma_config_class_called_with_arguments_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _checkpoint_with_prisma_class(
        tmp_path, monkeypatch, "VisionModelSAERunnerConfig", __reduce__=lambda self: (type(self), ("rm -rf /",))
    )
    with pytest.raises(CheckpointFormatError, match=r"weights\.pt"):
        SAE.load(path)


def test_every_load_error_is_a_library_error() -> None:
    for error_type in (CheckpointFormatError, ConfigError, ResolutionError):
        assert issubclass(error_type, VitSaeHooksError)
