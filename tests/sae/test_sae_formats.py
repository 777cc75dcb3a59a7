"""Checkpoint layouts: exact save/load round trips, older SAELens configs, folded legacy parameters, and
how Prisma, sparsify and clipscope files are found in a folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vit_sae_hooks.errors import CheckpointFormatError, ConfigError
from vit_sae_hooks.sae import SAE, SAEConfig
from vit_sae_hooks.sae.formats import sparsify

from helpers import FIXTURES


def reference(folder: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / folder / "reference.safetensors")


def assert_matches_recording(sae: SAE, folder: str, key: str = "output") -> None:
    ref = reference(folder)
    with torch.no_grad():
        torch.testing.assert_close(sae(ref["input"]), ref[key], rtol=1e-5, atol=1e-5)


def random_parameters(sae: SAE, seed: int) -> SAE:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return sae


ROUND_TRIP_CONFIGS = [
    SAEConfig(d_in=6, d_sae=10),
    SAEConfig(d_in=6, d_sae=10, architecture="topk", k=3, topk_apply_relu=False, token_set="cls"),
    SAEConfig(d_in=6, d_sae=10, architecture="jumprelu", apply_b_dec_to_input=False, token_set="patches"),
    SAEConfig(d_in=6, d_sae=10, normalize_activations="layer_norm", hook_name="blocks.2.hook_mlp_out", model_name="m"),
    SAEConfig(d_in=6, d_sae=10, normalize_activations="constant_norm_rescale", dtype="bfloat16"),
    SAEConfig(d_in=6, d_sae=10, normalize_activations="scaling_factor", scaling_factor=0.37, dtype="float64"),
]


@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS, ids=lambda c: f"{c.architecture}-{c.normalize_activations}-{c.dtype}")
def test_save_then_load_is_exact(config: SAEConfig, tmp_path: Path) -> None:
    sae = random_parameters(SAE(config), seed=1)
    lossy = not config.topk_apply_relu  # SAELens cannot express it; the save needs consent, our reload is exact
    sae.save(tmp_path / "sae", allow_lossy=lossy)
    loaded = SAE.load(tmp_path / "sae")
    x = torch.randn(3, 6, dtype=sae.W_enc.dtype)
    if config.normalize_activations == "scaling_factor":
        # Folded into the weights as SAELens does: a plain SAE computing the same outputs.
        assert loaded.cfg.normalize_activations == "none" and loaded.cfg.scaling_factor is None
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), sae(x))
            torch.testing.assert_close(loaded.encode(x), sae.encode(x))
        return
    assert loaded.cfg == sae.cfg
    for name, tensor in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with torch.no_grad():
        assert torch.equal(loaded(x), sae(x))


def test_saving_what_saelens_computes_differently_needs_consent(tmp_path: Path) -> None:
    sae = SAE(SAEConfig(d_in=6, d_sae=10, architecture="topk", k=3, topk_apply_relu=False))
    with pytest.raises(ConfigError, match=r"TopK SAE without ReLU.*allow_lossy=True"):
        sae.save(tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_save_records_the_dtype_the_parameters_have_now(tmp_path: Path) -> None:
    sae = random_parameters(SAE(SAEConfig(d_in=6, d_sae=10)), seed=2).to(torch.float64)
    sae.save(tmp_path)
    loaded = SAE.load(tmp_path)
    assert loaded.cfg.dtype == "float64"
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in sae.state_dict().items())


def test_saved_config_is_saelens_6_layout(tmp_path: Path) -> None:
    sae = SAE(SAEConfig(d_in=6, d_sae=10, architecture="topk", k=3, hook_name="blocks.1.hook_resid_post", model_name="m"))
    sae.save(tmp_path)
    values = json.loads((tmp_path / "cfg.json").read_text())
    assert values["architecture"] == "topk" and values["k"] == 3 and values["d_in"] == 6 and values["d_sae"] == 10
    assert values["apply_b_dec_to_input"] is True and values["normalize_activations"] == "none"
    assert values["rescale_acts_by_decoder_norm"] is False
    assert values["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert values["metadata"]["model_name"] == "m"
    assert values["metadata"]["sae_lens_version"].startswith("6.")
    assert set(load_file(tmp_path / "sae_weights.safetensors")) == {"W_enc", "b_enc", "W_dec", "b_dec"}


@pytest.mark.parametrize(
    "folder", ["prisma_relu_layernorm", "prisma_topk_none", "clipscope_topk/3_resid", "sparsify_topk/layers.3"]
)
def test_peer_checkpoint_resaved_in_our_layout_keeps_its_outputs(folder: str, tmp_path: Path) -> None:
    original = SAE.load(FIXTURES / folder)
    # clipscope's TopK has no ReLU, which SAELens cannot express: saving it in SAELens layout needs consent.
    original.save(tmp_path, allow_lossy=folder.startswith("clipscope"))
    resaved = SAE.load(tmp_path)
    assert resaved.cfg == original.cfg
    key = "reconstruction" if folder.startswith("clipscope") else "output"
    assert_matches_recording(resaved, folder, key)


def write_saelens(folder: Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(config))
    save_file(tensors, folder / "sae_weights.safetensors")
    return folder


def test_pre_6_saelens_topk_config_loads(tmp_path: Path) -> None:
    old_config = {
        "d_in": 64,
        "d_sae": 256,
        "dtype": "torch.float32",
        "hook_point": "blocks.3.hook_resid_post",
        "hook_point_layer": 3,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 8},
        "normalize_activations": False,
        "model_name": "tiny-vit",
        "sae_lens_training_version": "3.13.0",
    }
    folder = write_saelens(tmp_path / "old", old_config, load_file(FIXTURES / "saelens_topk/sae_weights.safetensors"))
    sae = SAE.load(folder)
    assert (sae.cfg.architecture, sae.cfg.k, sae.hook_name, sae.model_name) == ("topk", 8, "blocks.3.hook_resid_post", "tiny-vit")
    assert_matches_recording(sae, "saelens_topk")


def test_saelens_jumprelu_log_threshold_is_converted(tmp_path: Path) -> None:
    tensors = load_file(FIXTURES / "saelens_jumprelu/sae_weights.safetensors")
    # JumpReLU gates on relu(threshold), so a tiny positive threshold stands in for the fixture's negative ones.
    tensors["log_threshold"] = tensors.pop("threshold").clamp(min=1e-12).log()
    config = json.loads((FIXTURES / "saelens_jumprelu/cfg.json").read_text())
    sae = SAE.load(write_saelens(tmp_path / "jr", config, tensors))
    assert_matches_recording(sae, "saelens_jumprelu")


def test_saelens_rescale_acts_by_decoder_norm_matches_its_formula(tmp_path: Path) -> None:
    tensors = load_file(FIXTURES / "saelens_topk/sae_weights.safetensors")
    norms = torch.linspace(0.2, 3.0, 256)
    tensors["W_dec"] = tensors["W_dec"] / tensors["W_dec"].norm(dim=-1, keepdim=True) * norms[:, None]
    config = json.loads((FIXTURES / "saelens_topk/cfg.json").read_text()) | {"rescale_acts_by_decoder_norm": True}
    sae = SAE.load(write_saelens(tmp_path / "rescaled", config, tensors))
    # SAELens: rank pre-activations scaled by decoder norms, divide them back out before decoding.
    x = reference("saelens_topk")["input"].double()
    t = {name: value.double() for name, value in tensors.items()}
    pre = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * t["W_dec"].norm(dim=-1)
    values, indices = pre.topk(8, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    expected = (acts / t["W_dec"].norm(dim=-1)) @ t["W_dec"] + t["b_dec"]
    with torch.no_grad():
        torch.testing.assert_close(sae(x.float()).double(), expected, rtol=1e-5, atol=1e-5)


def test_saelens_finetuning_scaling_factor_is_folded(tmp_path: Path) -> None:
    tensors = load_file(FIXTURES / "saelens_standard/sae_weights.safetensors")
    tensors["scaling_factor"] = torch.linspace(0.5, 1.5, 256)
    config = json.loads((FIXTURES / "saelens_standard/cfg.json").read_text()) | {"finetuning_scaling_factor": True}
    sae = SAE.load(write_saelens(tmp_path / "ft", config, tensors))
    ref = reference("saelens_standard")
    expected = (ref["feature_acts"].double() * tensors["scaling_factor"].double()) @ tensors["W_dec"].double()
    with torch.no_grad():
        torch.testing.assert_close(sae(ref["input"]).double(), expected + tensors["b_dec"].double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("folder", ["prisma_relu_layernorm", "prisma_relu_none", "prisma_topk_none"])
def test_prisma_pickled_config_alone_matches_config_json(folder: str, tmp_path: Path) -> None:
    shutil.copy(FIXTURES / folder / "weights.pt", tmp_path / "weights.pt")
    from_pickle = SAE.load(tmp_path / "weights.pt")
    assert from_pickle.cfg == SAE.load(FIXTURES / folder).cfg
    assert_matches_recording(from_pickle, folder)


def test_prisma_weights_file_path_and_n_images_name(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "prisma_topk_none/config.json", tmp_path / "config.json")
    shutil.copy(FIXTURES / "prisma_topk_none/weights.pt", tmp_path / "n_images_2600058.pt")
    (tmp_path / "n_images_100.pt").write_bytes(b"an earlier, unreadable checkpoint")
    assert_matches_recording(SAE.load(tmp_path), "prisma_topk_none")
    assert_matches_recording(SAE.load(tmp_path / "n_images_2600058.pt"), "prisma_topk_none")


def test_clipscope_folder_picks_the_final_checkpoint(tmp_path: Path) -> None:
    layer_folder = tmp_path / "3_resid"
    layer_folder.mkdir()
    shutil.copy(FIXTURES / "clipscope_topk/3_resid/1000.pt", layer_folder / "1000.pt")
    (layer_folder / "500.pt").write_bytes(b"an earlier, unreadable checkpoint")
    sae = SAE.load(layer_folder)
    assert sae.hook_name == "blocks.3.hook_resid_post"
    assert_matches_recording(sae, "clipscope_topk/3_resid", "reconstruction")


def test_parent_folder_with_one_sae_is_accepted_and_with_two_is_refused(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "sparsify_topk", tmp_path / "run")
    assert SAE.load(tmp_path / "run").hook_name == "blocks.3.hook_resid_post"
    shutil.copytree(FIXTURES / "sparsify_topk/layers.3", tmp_path / "run/layers.5.mlp")
    with pytest.raises(CheckpointFormatError, match=r"several SAEs \('layers\.3', 'layers\.5\.mlp'\)"):
        SAE.load(tmp_path / "run")
    assert SAE.load(tmp_path / "run/layers.5.mlp").hook_name == "blocks.5.hook_mlp_out"


@pytest.mark.parametrize(
    "hookpoint, expected",
    [
        ("layers.3", "blocks.3.hook_resid_post"),
        ("layers.11.mlp", "blocks.11.hook_mlp_out"),
        ("layers.0.self_attn", "blocks.0.hook_attn_out"),
        ("vision_model.encoder.layers.7", "blocks.7.hook_resid_post"),
        ("embed_tokens", "embed_tokens"),
    ],
)
def test_sparsify_hookpoints_map_to_hook_names(hookpoint: str, expected: str) -> None:
    assert sparsify.hook_name_for(hookpoint) == expected
