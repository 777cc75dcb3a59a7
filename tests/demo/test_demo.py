"""The shipped shapes ViT and SAE meet their quality bars offline, and `vit-sae demo` tells the whole story."""

from __future__ import annotations

import pytest

from vit_sae_hooks import SAE, HookedViT
from vit_sae_hooks.cli import main
from vit_sae_hooks.demo.build import CIRCUIT_SAE_NAMES, MODEL_NAME, SAE_NAME, held_out_quality
from vit_sae_hooks.demo.run import run_demo
from vit_sae_hooks.errors import ResolutionError
from vit_sae_hooks.hub import ASSETS, builtin_names


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run_demo(out=tmp_path_factory.mktemp("demo"))


def test_shipped_checkpoints_load_offline_and_are_small():
    model = HookedViT.from_pretrained(MODEL_NAME)
    sae = SAE.from_pretrained(SAE_NAME)
    assert sae.hook_name == "blocks.2.hook_resid_post" and sae.d_in == model.cfg.d_model
    assert builtin_names() == [MODEL_NAME, *CIRCUIT_SAE_NAMES] and SAE_NAME in CIRCUIT_SAE_NAMES
    size = sum(path.stat().st_size for path in ASSETS.rglob("*") if path.is_file())
    assert size <= 10 * 2**20
    with pytest.raises(ResolutionError, match=r"not a built-in checkpoint.*shapes-vit"):
        HookedViT.from_pretrained("vit-sae-hooks/other-vit")


@pytest.mark.parametrize("sae_name", CIRCUIT_SAE_NAMES)
def test_shipped_checkpoints_meet_the_quality_bars(sae_name):
    quality = held_out_quality(HookedViT.from_pretrained(MODEL_NAME), SAE.from_pretrained(sae_name))
    assert quality["accuracy"] >= 0.95
    assert quality["explained_variance_pct"] >= 85
    assert quality["ce_recovered_pct"] >= 90


def test_demo_story(report):
    assert report.accuracy >= 0.95
    assert report.eval_row["explained_variance_pct"] >= 85
    assert set(report.selective_features) == {"circle", "square", "triangle", "cross", "ring"}
    ablation = report.ablation
    assert ablation["top"] < ablation["clean"] - 0.2, ablation
    assert abs(ablation["random"] - ablation["clean"]) < 0.1, ablation
    shares = [share for _, share in report.steering]
    assert shares[0] < 0.2 and shares[-1] > shares[0] + 0.3, report.steering
    assert len(report.sweep) == 16 and report.sweep[0][1] < 0
    assert len(report.figures) == 7 and all(path.stat().st_size > 1000 for path in report.figures)
    circuit = report.circuit
    assert circuit.hooks == [f"blocks.{layer}.hook_resid_post" for layer in (1, 2, 3)]
    for hook in circuit.hooks:  # 16 steps are within 1 % of the exact effect of each whole hook
        exact = circuit.clean_metric - circuit.baseline_metric[hook]
        assert float(circuit.node_attributions(hook).sum()) == pytest.approx(exact, rel=0.01)
    assert report.faithfulness.fraction[-1] > 0.8 and circuit.top_paths(1)
    assert report.figures[-1].name.startswith("circuit_")
    assert report.site.name == "index.html" and (report.site.parent / "data" / "summary.js").exists()
    assert report.site.parent.name == "browser" and report.lines[-1].endswith(report.site.resolve().as_uri())


def test_demo_command(capsys, tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--images", "500"]) == 0
    out = capsys.readouterr().out
    for expected in ("accuracy", "% Explained var.", "Most selective features", "Ablating", "Steering", "Ablation sweep",
                     "Feature circuit of the", "path +", "faithfulness", "Figures written",
                     f"open {(tmp_path / 'browser' / 'index.html').resolve().as_uri()}"):
        assert expected in out
    assert len(list(tmp_path.glob("*.png"))) == 7


@pytest.mark.slow
def test_rebuilding_from_scratch_matches_the_shipped_metrics(tmp_path):
    from vit_sae_hooks.demo.build import build

    rebuilt = build(tmp_path / "shapes-vit", progress=False)
    shipped = held_out_quality(HookedViT.from_pretrained(MODEL_NAME), SAE.from_pretrained(SAE_NAME))
    assert rebuilt.accuracy == pytest.approx(shipped["accuracy"], abs=0.01)
    assert rebuilt.explained_variance_pct == pytest.approx(shipped["explained_variance_pct"], abs=1.5)
    assert rebuilt.ce_recovered_pct == pytest.approx(shipped["ce_recovered_pct"], abs=1.5)
    assert rebuilt.l0 == pytest.approx(shipped["l0"], abs=0.5)
    for name in CIRCUIT_SAE_NAMES:
        layer = name.rsplit("/", 1)[1]
        rebuilt_sae = SAE.from_pretrained(rebuilt.folder / "resid_post" / layer)
        again = held_out_quality(HookedViT.from_pretrained(rebuilt.folder), rebuilt_sae)
        shipped = held_out_quality(HookedViT.from_pretrained(MODEL_NAME), SAE.from_pretrained(name))
        assert again["explained_variance_pct"] == pytest.approx(shipped["explained_variance_pct"], abs=1.5), name
    rebuilt_model = HookedViT.from_pretrained(rebuilt.folder)
    assert rebuilt_model.cfg == HookedViT.from_pretrained(MODEL_NAME).cfg
