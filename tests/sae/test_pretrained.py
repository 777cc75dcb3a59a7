"""The registry of published SAEs: well formed, faithful to the published tables, reachable by name and query,
and resolvable to hub files (offline: through a Hugging Face cache built here, since nothing can be downloaded)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vit_sae_hooks import pretrained
from vit_sae_hooks.errors import ResolutionError
from vit_sae_hooks.sae import SAE
from vit_sae_hooks.sae import pretrained as sae_pretrained

from helpers import DOCS, FIXTURES, make_hub_cache

PUBLISHED = FIXTURES / "published"

SUITE_SIZES = {
    "prisma-clip-b32-vanilla-all-patches": 24,
    "prisma-clip-b32-vanilla-cls": 12,
    "prisma-clip-b32-topk64-cls": 12,
    "prisma-clip-b32-vanilla-patches": 11,
    "clipscope-clip-l14-topk32": 8,
    "prisma-clip-b32-transcoder-topk": 11,
    "saev-24k": 3,
}
MODELS = (pretrained.PRISMA_BASE_MODEL, pretrained.CLIPSCOPE_BASE_MODEL, "openai/clip-vit-base-patch16",
          "facebook/dinov2-base", "imageomics/bioclip")


def test_suites_have_the_published_number_of_entries() -> None:
    sizes: dict[str, int] = {}
    for entry in pretrained.all_entries():
        sizes[entry.suite] = sizes.get(entry.suite, 0) + 1
    assert sizes == SUITE_SIZES


@pytest.mark.parametrize("entry", pretrained.all_entries(), ids=lambda e: e.name)
def test_every_entry_is_well_formed(entry: pretrained.PretrainedSAE) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", entry.repo_id)
    assert entry.files and all(isinstance(pattern, str) and pattern for pattern in entry.files)
    assert entry.name.endswith(f"/{entry.hook_out or entry.hook}/{entry.layer}")
    if entry.hook_out is None:
        assert re.fullmatch(r"blocks\.\d+\.hook_(resid_post|mlp_out)", entry.hook_name)
    else:
        assert (entry.hook_name, entry.hook_name_out) == (f"blocks.{entry.layer}.ln2.hook_normalized",
                                                          f"blocks.{entry.layer}.hook_mlp_out")
    assert entry.tokens in ("all", "cls", "patches")
    assert entry.architecture in ("standard", "topk") and (entry.k is not None) == (entry.architecture == "topk")
    assert entry.model_name in MODELS
    # saev publishes no metric table; every other suite does.
    assert bool(entry.metrics) == (entry.suite != "saev-24k")
    assert all(math.isfinite(value) for value in entry.metrics.values())
    assert pretrained.get(entry.name) is entry
    assert entry.hub_path.startswith(entry.repo_id)


def test_names_are_unique_and_layers_cover_the_published_ranges() -> None:
    entries = pretrained.all_entries()
    assert len({entry.name for entry in entries}) == len(entries) == sum(SUITE_SIZES.values())
    layers = {suite: sorted({e.layer for e in entries if e.suite == suite}) for suite in SUITE_SIZES}
    assert layers["prisma-clip-b32-vanilla-all-patches"] == list(range(12))
    assert layers["prisma-clip-b32-vanilla-cls"] == list(range(12))
    assert layers["prisma-clip-b32-topk64-cls"] == list(range(12))
    assert layers["prisma-clip-b32-vanilla-patches"] == [*range(10), 11]
    assert layers["clipscope-clip-l14-topk32"] == [2, 5, 8, 11, 14, 17, 20, 22]
    assert {e.hook for e in entries if e.suite == "prisma-clip-b32-vanilla-all-patches"} == {"mlp_out", "resid_post"}


def published_prisma_rows() -> list[list[str]]:
    rows = []
    for line in (PUBLISHED / "prisma_clip_b32_sae_tables.md").read_text().splitlines():
        if line.startswith("| [link]"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_prisma_entries_carry_the_published_repo_ids_and_numbers() -> None:
    rows = published_prisma_rows()
    prisma = [e for e in pretrained.all_entries() if e.suite.startswith("prisma") and e.hook_out is None]
    assert len(rows) == len(prisma)
    for row, entry in zip(rows, prisma, strict=True):
        link = re.search(r"\(https://huggingface.co/(.+)\)", row[0]).group(1)
        assert entry.repo_id == link
        assert (str(entry.layer), entry.hook) == (row[1], row[2])
        published_numbers = [float(cell) for cell in row[3:]]
        ours = ([entry.l1_coefficient] if entry.l1_coefficient is not None else []) + list(entry.metrics.values())
        assert ours == published_numbers, entry.name


def test_prisma_transcoders_carry_the_published_table() -> None:
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in (PUBLISHED / "prisma_clip_b32_transcoder_table.md").read_text().splitlines()
        if line.startswith("| [link]")
    ]
    entries = pretrained.find(suite="prisma-clip-b32-transcoder-topk")
    assert len(rows) == len(entries) == 11
    for row, entry in zip(rows, entries, strict=True):
        assert entry.repo_id == re.search(r"\(https://huggingface.co/(.+)\)", row[0]).group(1)
        assert (str(entry.layer), row[2], entry.k) == (row[1], "MLP", int(row[4]))
        published = [float(row[3]), *map(float, row[5:])]
        assert list(entry.metrics.values()) == published, entry.name
        assert (entry.architecture, entry.d_sae, entry.tokens) == ("topk", 768 * 64, "all")


def test_saev_entries_name_their_caveat_and_read_the_hub_cache(tmp_path: Path, offline: None) -> None:
    entry = pretrained.get("saev/clip-b16/resid_post/10")
    assert (entry.hook_name, entry.tokens, entry.filename) == ("blocks.10.hook_resid_post", "patches", "sae.pt")
    assert "fold_input_affine" in entry.notes
    make_hub_cache(tmp_path, entry.repo_id, {"sae.pt": FIXTURES / "saev_legacy_relu/sae.pt"})
    sae = SAE.from_pretrained(entry.name, cache_dir=tmp_path)
    assert (sae.hook_name, sae.model_name, sae.token_set) == (entry.hook_name, entry.model_name, "patches")


def test_a_transcoder_entry_fills_both_hooks(tmp_path: Path, offline: None) -> None:
    entry = pretrained.get("prisma/clip-b32/transcoder-topk/mlp_out/3")
    assert pretrained.find(hook="blocks.3.hook_mlp_out", suite=entry.suite) == [entry]
    assert pretrained.find(hook="blocks.3.ln2.hook_normalized") == [entry]
    fixture = FIXTURES / "prisma_transcoder_topk_skip_layernorm"
    make_hub_cache(tmp_path, entry.repo_id, {"config.json": fixture / "config.json", "weights.pt": fixture / "weights.pt"})
    sae = SAE.from_pretrained(entry.name, cache_dir=tmp_path)
    assert sae.is_transcoder and (sae.hook_name, sae.hook_name_out) == ("blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out")


def test_clipscope_entries_carry_the_model_card_numbers() -> None:
    card = (PUBLISHED / "clip_scope_model_card.txt").read_text()
    table = re.search(r"Sort Eval Accuracy \(CLS token\)\n(.*?)\n\n", card, re.DOTALL).group(1)
    for line in table.splitlines():
        layer, mse, variance, dead, active, sort_eval = line.split()
        entry = pretrained.get(f"clipscope/clip-l14/resid_post/{layer}")
        expected = {
            "mse": float(mse),
            "explained_variance": float(variance),
            "dead_feature_proportion": float(dead),
            "active_feature_proportion": float(active),
        }
        if sort_eval != "-":
            expected["sort_eval_accuracy"] = float(sort_eval)
        assert dict(entry.metrics) == expected
        assert (entry.k, entry.d_sae, entry.d_in, entry.subfolder) == (32, 65536, 1024, f"{layer}_resid")


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"layer": 9, "hook": "resid_post", "tokens": "all"}, ["prisma/clip-b32/all-patches/resid_post/9"]),
        ({"hook": "blocks.9.hook_mlp_out"},
         ["prisma/clip-b32/all-patches/mlp_out/9", "prisma/clip-b32/transcoder-topk/mlp_out/9"]),
        ({"layer": 9, "hook": "hook_mlp_out", "tokens": "cls"}, []),
        ({"layer": 3, "hook": "blocks.9.hook_resid_post"}, []),
        ({"layer": 11, "architecture": "topk", "tokens": "cls"}, ["prisma/clip-b32/cls-topk64/resid_post/11"]),
        ({"layer": 22}, ["clipscope/clip-l14/resid_post/22"]),
        ({"layer": 10, "tokens": "patches"},
         ["saev/clip-b16/resid_post/10", "saev/dinov2-b14/resid_post/10", "saev/bioclip-b16/resid_post/10"]),
        ({"layer": 10, "tokens": "patches", "model": pretrained.PRISMA_BASE_MODEL}, []),
    ],
)
def test_find(query: dict, expected: list[str]) -> None:
    assert [entry.name for entry in pretrained.find(**query)] == expected


def test_find_by_model_and_suite() -> None:
    assert len(pretrained.find(model=pretrained.CLIPSCOPE_BASE_MODEL)) == 8
    assert len(pretrained.find(suite="prisma-clip-b32-vanilla-cls", hook="resid_post")) == 12


def test_unknown_short_name_suggests_close_ones() -> None:
    with pytest.raises(ResolutionError, match="prisma/clip-b32/all-patches/resid_post/9"):
        pretrained.get("prisma/clip-b32/all-patches/resid-post/9")
    with pytest.raises(ResolutionError, match="no registered SAE"):
        pretrained.lookup("clipscope/clip-l14/resid_post/23")
    assert pretrained.lookup("Prisma-Multimodal/some-other-repo") is None


def test_from_pretrained_by_short_name_reads_the_hub_cache(tmp_path: Path, offline: None) -> None:
    entry = pretrained.get("prisma/clip-b32/cls-topk64/resid_post/0")
    fixture = FIXTURES / "prisma_topk_none"
    make_hub_cache(tmp_path, entry.repo_id, {"config.json": fixture / "config.json", "weights.pt": fixture / "weights.pt"})
    sae = SAE.from_pretrained(entry.name, cache_dir=tmp_path)
    assert sae.hook_name == "blocks.0.hook_resid_post"
    assert sae.model_name == pretrained.PRISMA_BASE_MODEL
    ref = load_file(fixture / "reference.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(sae(ref["input"]), ref["output"], rtol=1e-5, atol=1e-5)


def test_from_pretrained_clipscope_fills_base_model_and_takes_cached_final_checkpoint(tmp_path: Path, offline: None) -> None:
    entry = pretrained.get("clipscope/clip-l14/resid_post/11")
    checkpoint = FIXTURES / "clipscope_topk/3_resid/1000.pt"
    make_hub_cache(tmp_path, entry.repo_id, {"11_resid/1200013184.pt": checkpoint, "5_resid/99.pt": checkpoint})
    sae = SAE.from_pretrained(entry.name, cache_dir=tmp_path)
    assert (sae.hook_name, sae.model_name, sae.cfg.topk_apply_relu) == (
        "blocks.11.hook_resid_post",
        pretrained.CLIPSCOPE_BASE_MODEL,
        False,
    )


def test_clipscope_final_checkpoint_is_chosen_from_the_repo_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    listing = ["README.md", "22_resid/100000.pt", "22_resid/1200013184.pt", "22_resid/999999999.pt", "2_resid/5000000000.pt"]
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, revision=None: listing)
    requested = []
    monkeypatch.setattr(
        sae_pretrained, "resolve_local_or_hub", lambda path, patterns, **kwargs: requested.append((path, patterns)) or Path("/x")
    )
    location = pretrained.get("clipscope/clip-l14/resid_post/22").resolve()
    assert requested == [("lewington/CLIP-ViT-L-scope/22_resid", ["1200013184.pt"])]
    assert location == Path("/x/1200013184.pt")


def test_hub_file_path_fetches_only_that_file_and_its_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    requested = []
    monkeypatch.setattr(
        sae_pretrained, "resolve_local_or_hub", lambda path, patterns, **kwargs: requested.append((path, patterns)) or Path("/x")
    )
    assert pretrained.resolve_location("lewington/CLIP-ViT-L-scope/22_resid/1200013184.pt") == Path("/x/1200013184.pt")
    assert requested == [("lewington/CLIP-ViT-L-scope/22_resid", ["1200013184.pt", "cfg.json", "config.json"])]


@pytest.mark.parametrize("entry", pretrained.all_entries()[::7], ids=lambda e: e.name)
def test_entries_request_their_hub_folder_and_file_patterns(
    entry: pretrained.PretrainedSAE, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def offline_listing(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", offline_listing)
    requested = []
    monkeypatch.setattr(
        sae_pretrained, "resolve_local_or_hub", lambda path, patterns, **kwargs: requested.append((path, patterns)) or Path("/x")
    )
    entry.resolve()
    assert requested == [(entry.hub_path, list(entry.files))]


def test_docs_page_lists_every_entry() -> None:
    page = (DOCS / "pretrained.md").read_text()
    for entry in pretrained.all_entries():
        assert f"`{entry.name}` | `{entry.hub_path}`" in page, entry.name
