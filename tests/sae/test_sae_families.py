"""BatchTopK, Matryoshka, gated SAEs and transcoders, read from the files SAELens, ViT-Prisma and saev wrote and
checked against the outputs and losses those libraries recorded (tests/fixtures/README_sae_families.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vit_sae_hooks import SAE, SAEConfig
from vit_sae_hooks.errors import CheckpointFormatError, ConfigError
from vit_sae_hooks.sae import BatchTopKSAE, GatedSAE, MatryoshkaSAE, TrainingBatch, Transcoder
from vit_sae_hooks.sae.architectures.topk import auxk_loss
from vit_sae_hooks.training import TrainConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# folder -> (class name, input hook, output hook or None)
READERS = {
    "saelens_batchtopk_inference": ("BatchTopKSAE", "blocks.3.hook_resid_post", None),
    "saelens_batchtopk_trained": ("BatchTopKSAE", "blocks.3.hook_resid_post", None),
    "saelens_matryoshka_batchtopk_inference": ("MatryoshkaSAE", "blocks.3.hook_resid_post", None),
    "saelens_gated": ("GatedSAE", "blocks.3.hook_resid_post", None),
    "saelens_gated_training": ("GatedSAE", "blocks.3.hook_resid_post", None),
    "saelens_transcoder": ("ReLUTranscoder", "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out"),
    "saelens_skip_transcoder": ("ReLUTranscoder", "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out"),
    "saelens_jumprelu_transcoder": ("JumpReLUTranscoder", "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out"),
    "saelens_jumprelu_skip_transcoder": ("JumpReLUTranscoder", "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out"),
    "prisma_gated_layernorm": ("GatedSAE", "blocks.3.hook_resid_post", None),
    "prisma_gated_none": ("GatedSAE", "blocks.3.hook_resid_post", None),
    "prisma_transcoder_topk_skip_layernorm": ("TopKTranscoder", "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out"),
    "prisma_transcoder_relu_noskip_none": ("ReLUTranscoder", "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out"),
    "saev_relu/sae.pt": ("ReLUSAE", None, None),
    "saev_topk/sae.pt": ("TopKSAE", None, None),
    "saev_batchtopk/sae.pt": ("BatchTopKSAE", None, None),
    "saev_legacy_relu/sae.pt": ("ReLUSAE", None, None),
}


def _reference(name: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / name.split("/")[0] / "reference.safetensors")


@pytest.mark.parametrize("name", sorted(READERS))
def test_peer_checkpoints_give_the_peers_outputs(name):
    cls_name, hook_in, hook_out = READERS[name]
    sae = SAE.from_pretrained(FIXTURES / name)
    ref = _reference(name)
    assert type(sae).__name__ == cls_name
    assert (sae.hook_name, sae.hook_name_out) == (hook_in, hook_out)
    assert sae.is_transcoder == (hook_out is not None)
    with torch.no_grad():
        acts = sae.encode(ref["input"])
        torch.testing.assert_close(acts, ref["feature_acts"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(ref["input"]), ref["output"], atol=1e-5, rtol=1e-5)
        if "decoded" in ref and not name.startswith("prisma"):
            # SAELens's decode has no skip term; Prisma's is not de-normalised (ours is), so it is not comparable.
            torch.testing.assert_close(sae.decode(acts), ref["decoded"], atol=1e-5, rtol=1e-5)


def test_saev_token_set_and_layer_convention(tmp_path):
    sae = SAE.load(FIXTURES / "saev_relu/sae.pt")
    assert sae.token_set == "patches" and sae.hook_name is None
    # saev's releases keep one checkpoint per layer_{L}/{run}/sae.pt; L is the output of block L.
    target = tmp_path / "layer_6" / "3zih0tpa" / "sae.pt"
    target.parent.mkdir(parents=True)
    shutil.copy(FIXTURES / "saev_relu/sae.pt", target)
    assert SAE.from_pretrained(target.parent).hook_name == "blocks.6.hook_resid_post"


def test_saev_legacy_checkpoints_keep_the_forward_they_were_trained_with():
    # Current saev reads the old files without subtracting b_dec, which changes their outputs (recorded too).
    sae = SAE.load(FIXTURES / "saev_legacy_relu/sae.pt")
    ref = _reference("saev_legacy_relu")
    with torch.no_grad():
        assert sae.cfg.apply_b_dec_to_input
        assert (sae(ref["input"]) - ref["output_current_saev"]).abs().max() > 0.1
        torch.testing.assert_close(sae(ref["input"]), ref["output"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, kind", [("saelens_batchtopk_training", "BatchTopKSAE"),
                                        ("saelens_matryoshka_batchtopk_training", "MatryoshkaSAE")])
def test_saelens_training_form_batch_selection_and_inference(name, kind):
    sae = SAE.load(FIXTURES / name)
    ref = _reference(name)
    assert type(sae).__name__ == kind and sae.cfg.k == 16
    with torch.no_grad():
        batch_acts = sae.encode_batch(ref["input"])
        torch.testing.assert_close(batch_acts, ref["feature_acts"], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(batch_acts), ref["output"], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(sae.encode(ref["input"]), ref["feature_acts_inference"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(ref["input"]), ref["output_inference"], atol=1e-5, rtol=1e-5)
    assert int((batch_acts != 0).sum()) == 16 * 34


def test_saev_batchtopk_train_mode_is_encode_batch():
    sae = SAE.load(FIXTURES / "saev_batchtopk/sae.pt")
    ref = _reference("saev_batchtopk")
    assert not sae.cfg.topk_apply_relu
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_batch(ref["input"]), ref["feature_acts_train_mode"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.threshold, ref["threshold"].expand(sae.d_sae), atol=0, rtol=0)


def _saelens_step(name: str, **settings) -> tuple[SAE, dict[str, torch.Tensor], object]:
    sae = SAE.load(FIXTURES / name)
    ref = _reference(name)
    mask = ref.get("train_step_dead_neuron_mask", torch.zeros(sae.d_sae))
    dead = mask.bool().nonzero().flatten()
    # variance 1: this library divides every loss by the data's variance, SAELens does not.
    if sae.cfg.prefixes is not None:
        settings["prefixes"] = sae.cfg.prefixes
    batch = TrainingBatch(dead, 1.0, TrainConfig(architecture=sae.cfg.architecture, k=16, **settings))
    x = ref["train_step_input"]
    return sae, ref, sae.training_terms(x, x, batch)


@pytest.mark.parametrize("name", ["saelens_batchtopk_training", "saelens_matryoshka_batchtopk_training"])
def test_batchtopk_training_step_matches_saelens(name):
    sae, ref, terms = _saelens_step(name)
    x = ref["train_step_input"]
    torch.testing.assert_close((terms.reconstruction - x).pow(2).sum(-1).mean(), ref["loss_mse_loss"], rtol=1e-5, atol=1e-6)
    # One update of the running threshold, with SAELens's rate 0.01 (SAELens keeps it in float64).
    torch.testing.assert_close(sae.threshold.double(), ref["topk_threshold_after_step"].expand(sae.d_sae), rtol=1e-6, atol=0)
    # SAELens's AuxK keeps the signed top-k_aux dead pre-activations; the formula is the same.
    sae_in = sae.encoder_input(x)
    batch = TrainingBatch(ref["train_step_dead_neuron_mask"].bool().nonzero().flatten(), 1.0, None)
    aux = auxk_loss(sae, sae_in, (x - terms.reconstruction).detach(), batch, apply_relu=False)
    torch.testing.assert_close(aux, ref["loss_auxiliary_reconstruction_loss"], rtol=1e-5, atol=1e-6)
    if isinstance(sae, MatryoshkaSAE):
        inner = ref["loss_inner_mse_loss_32"] + ref["loss_inner_mse_loss_96"]
        torch.testing.assert_close(terms.extra_loss, inner, rtol=1e-5, atol=1e-6)


def test_matryoshka_prefix_saes_are_the_first_latents():
    sae = SAE.load(FIXTURES / "saelens_matryoshka_batchtopk_inference")
    assert sae.cfg.prefixes == (32, 96, 256)
    x = _reference("saelens_matryoshka_batchtopk_inference")["input"]
    with torch.no_grad():
        full = sae.encode(x)
        for width in sae.cfg.prefixes:
            prefix = sae.prefix_sae(width)
            assert type(prefix) is BatchTopKSAE and prefix.d_sae == width
            torch.testing.assert_close(prefix.encode(x), full[..., :width])
            torch.testing.assert_close(prefix(x), full[..., :width] @ sae.W_dec[:width] + sae.b_dec)
    with pytest.raises(ConfigError, match="not one of this SAE's prefixes"):
        sae.prefix_sae(64)


def test_gated_training_terms_match_saelens():
    sae, ref, terms = _saelens_step("saelens_gated_training", l1_coefficient=5.0)
    x = ref["train_step_input"]
    assert isinstance(sae, GatedSAE)
    torch.testing.assert_close((terms.reconstruction - x).pow(2).sum(-1).mean(), ref["loss_mse_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(5.0 * terms.sparsity_loss, ref["loss_l1_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms.extra_loss, ref["loss_auxiliary_reconstruction_loss"], rtol=1e-5, atol=1e-6)


def test_gated_is_a_jumprelu_with_the_implied_threshold():
    sae = SAE.load(FIXTURES / "saelens_gated")
    x = _reference("saelens_gated")["input"]
    with torch.no_grad():
        sae_in = x - sae.b_dec
        gate = (sae_in @ sae.W_enc + sae.b_gate) > 0
        magnitude = torch.relu(sae_in @ (sae.W_enc * sae.r_mag.exp()) + sae.b_enc)
        torch.testing.assert_close(sae.encode(x), gate * magnitude)
    assert bool((sae.threshold < 0).any()), "the fixture exercises negative thresholds"


ROUND_TRIPS = ["saelens_batchtopk_inference", "saelens_matryoshka_batchtopk_inference", "saelens_gated",
               "saelens_skip_transcoder", "saelens_jumprelu_transcoder", "saelens_jumprelu_skip_transcoder",
               "prisma_transcoder_relu_noskip_none", "saev_batchtopk/sae.pt"]


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_saves_read_back_identically_in_saelens_layout(tmp_path, name):
    sae = SAE.load(FIXTURES / name)
    x = _reference(name)["input"]
    again = SAE.load(sae.save(tmp_path / "saved"))
    assert type(again) is type(sae)
    assert again.cfg == sae.cfg
    with torch.no_grad():
        torch.testing.assert_close(again(x), sae(x), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["saelens_batchtopk_inference", "saelens_matryoshka_batchtopk_inference",
                                  "saelens_skip_transcoder", "saelens_gated"])
def test_saved_config_has_the_layout_saelens_writes(tmp_path, name):
    # The same keys as SAELens's own save (plus this library's opaque metadata block), the same architecture.
    theirs = json.loads((FIXTURES / name / "cfg.json").read_text())
    ours = json.loads((SAE.load(FIXTURES / name).save(tmp_path / "saved") / "cfg.json").read_text())
    assert set(ours) == set(theirs)
    assert ours["architecture"] == theirs["architecture"]
    for key in ("training_architecture", "hook_name", "hook_name_out"):
        assert ours["metadata"].get(key) == theirs["metadata"].get(key)
    saved_names = set(load_file(tmp_path / "saved/sae_weights.safetensors"))
    assert saved_names == set(load_file(FIXTURES / name / "sae_weights.safetensors"))


def test_a_topk_transcoder_has_no_saelens_form(tmp_path):
    sae = SAE.load(FIXTURES / "prisma_transcoder_topk_skip_layernorm")
    with pytest.raises(ConfigError, match="SAELens has only ReLU and JumpReLU transcoders"):
        sae.save(tmp_path / "saved")
    x = _reference("prisma_transcoder_topk_skip_layernorm")["input"]
    again = SAE.load(sae.save(tmp_path / "saved", allow_lossy=True))
    with torch.no_grad():
        torch.testing.assert_close(again(x), sae(x), atol=0, rtol=0)


def _edited(tmp_path: Path, name: str, config=None, tensors=None) -> Path:
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    if config is not None:
        values = json.loads((folder / "cfg.json").read_text())
        config(values)
        (folder / "cfg.json").write_text(json.dumps(values))
    if tensors is not None:
        weights = load_file(folder / "sae_weights.safetensors")
        tensors(weights)
        save_file(weights, folder / "sae_weights.safetensors")
    return folder


def test_a_batchtopk_checkpoint_without_its_threshold_is_reported(tmp_path):
    folder = _edited(tmp_path, "saelens_batchtopk_inference", tensors=lambda t: t.pop("threshold"))
    with pytest.raises(CheckpointFormatError, match=r"needs its learned 'threshold'.*save_inference_model"):
        SAE.load(folder)
    folder = _edited(tmp_path, "saelens_batchtopk_training", tensors=lambda t: t.pop("topk_threshold"))
    with pytest.raises(CheckpointFormatError, match="has no 'topk_threshold'"):
        SAE.load(folder)
    saev = tmp_path / "saev.pt"
    header, state = _saev_parts(FIXTURES / "saev_batchtopk/sae.pt")
    state.pop("activation.threshold")
    _write_saev(saev, header, state)
    with pytest.raises(CheckpointFormatError, match=r"no 'activation\.threshold'"):
        SAE.load(saev)


def _saev_parts(path: Path) -> tuple[bytes, dict]:
    import io

    data = path.read_bytes()
    header, rest = data.split(b"\n", 1)
    return header, torch.load(io.BytesIO(rest), weights_only=True)


def _write_saev(path: Path, header: bytes, state: dict) -> None:
    with open(path, "wb") as handle:
        handle.write(header + b"\n")
        torch.save(state, handle)


def test_saev_headers_name_their_problems(tmp_path):
    header, state = _saev_parts(FIXTURES / "saev_topk/sae.pt")
    values = json.loads(header)
    values["cfg"]["activation"]["cls"] = "Sigmoid"
    _write_saev(tmp_path / "a.pt", json.dumps(values).encode(), state)
    with pytest.raises(ConfigError, match="saev activation 'Sigmoid' is not supported"):
        SAE.load(tmp_path / "a.pt")
    values["schema"] = 9
    _write_saev(tmp_path / "b.pt", json.dumps(values).encode(), state)
    with pytest.raises(CheckpointFormatError, match="schema 9 is unknown"):
        SAE.load(tmp_path / "b.pt")
    (tmp_path / "c.pt").write_bytes(b"{not json\n" + (FIXTURES / "saev_topk/sae.pt").read_bytes().split(b"\n", 1)[1])
    with pytest.raises(CheckpointFormatError, match="not saev's JSON header"):
        SAE.load(tmp_path / "c.pt")


@pytest.mark.parametrize(
    "prefixes, message",
    [
        ([64, 32, 256], "strictly increasing"),
        ([32, 32, 256], "strictly increasing"),
        ([32, 512], "exceed d_sae=256"),
        ([32, 96], r"must end with d_sae=256.*\[32, 96, 256\]"),
        ([], "needs prefixes"),
        (None, "needs prefixes"),
        ([0, 256], "positive"),
    ],
)
def test_bad_prefixes_are_reported(prefixes, message):
    with pytest.raises(ConfigError, match=message):
        SAEConfig(d_in=64, d_sae=256, architecture="matryoshka", k=16, prefixes=prefixes)


def test_other_architectures_refuse_prefixes_and_k():
    with pytest.raises(ConfigError, match="belong to architecture 'matryoshka'"):
        SAEConfig(d_in=64, d_sae=256, architecture="batchtopk", k=16, prefixes=[32, 256])
    with pytest.raises(ConfigError, match="needs k"):
        SAEConfig(d_in=64, d_sae=256, architecture="batchtopk")
    with pytest.raises(ConfigError, match="more than d_sae"):
        SAEConfig(d_in=64, d_sae=256, architecture="batchtopk", k=300)


def test_classes_are_exported():
    transcoder = SAE(SAEConfig(d_in=8, d_sae=16, d_out=4, apply_b_dec_to_input=False))
    assert isinstance(transcoder, Transcoder) and transcoder.W_dec.shape == (16, 4) and transcoder.b_dec.shape == (4,)
    assert isinstance(SAE(SAEConfig(d_in=8, d_sae=16, architecture="matryoshka", k=2, prefixes=(4, 16))), BatchTopKSAE)


@pytest.mark.parametrize("architecture", ["standard", "topk", "batchtopk", "gated"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_fold_input_affine_reads_raw_activations(architecture, apply_b_dec):
    # An SAE trained on (x - mean) / scale, folded, computes on raw x what the original computes on the
    # normalised x, mapped back: checked in float64.
    torch.manual_seed(0)
    k = 6 if architecture in ("topk", "batchtopk") else None
    sae = SAE(SAEConfig(d_in=16, d_sae=48, architecture=architecture, k=k, apply_b_dec_to_input=apply_b_dec,
                        dtype="float64"))
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_(0, 0.3)
        if architecture == "batchtopk":
            sae.threshold.fill_(0.2)
    mean, scale = torch.randn(16, dtype=torch.float64), torch.rand(16, dtype=torch.float64) + 0.5
    x = torch.randn(40, 16, dtype=torch.float64) * 3 + 1
    raw = sae.fold_input_affine(mean, scale)
    assert not raw.cfg.apply_b_dec_to_input and type(raw) is type(sae)
    with torch.no_grad():
        normalised = (x - mean) / scale
        torch.testing.assert_close(raw.encode(x), sae.encode(normalised))
        torch.testing.assert_close(raw(x), sae(normalised) * scale + mean)
    scalar = sae.fold_input_affine(0.5, 2.0)
    with torch.no_grad():
        torch.testing.assert_close(scalar(x), sae((x - 0.5) / 2.0) * 2.0 + 0.5)
    with pytest.raises(ConfigError, match="positive scale"):
        sae.fold_input_affine(0.0, 0.0)
