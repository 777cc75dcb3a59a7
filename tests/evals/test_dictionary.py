"""Dictionary comparisons against the full float64 cosine matrices they avoid building."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vit_sae_hooks import SAE, SAEConfig
from vit_sae_hooks.errors import ConfigError, InputShapeError
from vit_sae_hooks.evals import compare_dictionaries, nearest_directions, redundancy


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T


def _sae(d_sae: int, d_in: int = 12, seed: int = 0, **extra) -> SAE:
    torch.manual_seed(seed)
    return SAE(SAEConfig(d_in=d_in, d_sae=d_sae, **extra))


@pytest.mark.parametrize("block", [7, 64])
def test_nearest_within_one_matrix_equal_the_full_cosine_matrix(block):
    decoder = torch.randn(50, 12, generator=torch.Generator().manual_seed(5))
    cosines = _cosines(decoder, decoder)
    cosines.fill_diagonal_(-2)
    expected = cosines.topk(6, dim=1)
    positions, values = nearest_directions(decoder, n=6, block=block)
    assert torch.equal(positions, expected.indices)
    torch.testing.assert_close(values.double(), expected.values, atol=1e-6, rtol=0)


@settings(max_examples=40, deadline=None)
@given(n_a=st.integers(1, 40), n_b=st.integers(1, 40), n=st.integers(1, 5), block=st.integers(1, 17),
       seed=st.integers(0, 2**16))
def test_nearest_across_two_matrices_equal_the_full_cosine_matrix(n_a, n_b, n, block, seed):
    generator = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n_a, 8, generator=generator), torch.randn(n_b, 8, generator=generator)
    expected = _cosines(a, b).topk(min(n, n_b), dim=1)
    positions, values = nearest_directions(a, b, n=n, block=block)
    torch.testing.assert_close(values.double(), expected.values, atol=1e-6, rtol=0)
    # Positions agree up to ties: each returned position has the cosine returned for it.
    torch.testing.assert_close(_cosines(a, b).gather(1, positions), values.double(), atol=1e-6, rtol=0)


def test_a_permuted_rescaled_copy_matches_one_to_one():
    a = _sae(64)
    b = _sae(64, seed=1)
    permutation = torch.randperm(64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        b.W_dec.copy_(a.W_dec[permutation] * torch.rand(64, 1, generator=torch.Generator().manual_seed(3)).add(0.5))
    comparison = compare_dictionaries(a, b, block=10)
    # Feature i of A is feature j of B where permutation[j] == i.
    assert torch.equal(comparison.match_a, permutation.argsort())
    assert torch.equal(comparison.match_b, permutation)
    assert comparison.mmcs == pytest.approx(1.0, abs=1e-6) and comparison.mmcs_reverse == pytest.approx(1.0, abs=1e-6)
    assert comparison.mutual_fraction == 1.0 and comparison.fraction_above(0.999) == 1.0


def test_mmcs_and_mutual_pairs_of_unrelated_saes_equal_their_definitions():
    a, b = _sae(48, seed=4), _sae(80, seed=5)
    comparison = compare_dictionaries(a, b, block=16)
    cosines = _cosines(a.W_dec.detach(), b.W_dec.detach())
    assert comparison.mmcs == pytest.approx(cosines.max(1).values.mean().item(), abs=1e-6)
    assert comparison.mmcs_reverse == pytest.approx(cosines.max(0).values.mean().item(), abs=1e-6)
    best_b, best_a = cosines.argmax(1), cosines.argmax(0)
    mutual = sum(int(best_a[best_b[i]]) == i for i in range(48)) / 48
    assert comparison.mutual_fraction == pytest.approx(mutual)
    assert comparison.fraction_above(0.5) == pytest.approx((cosines.max(1).values >= 0.5).double().mean().item())
    assert 0 < comparison.mmcs < 0.9  # random 12-d directions are not copies of each other
    assert set(comparison.summary()) == {"mmcs", "mmcs_reverse", "mutual_fraction", "fraction_above_0.9",
                                         "fraction_above_0.7"}


def test_redundancy_finds_a_planted_duplicate_and_is_signed():
    sae = _sae(40)
    with torch.no_grad():
        sae.W_dec[9] = 3 * sae.W_dec[5]
        sae.W_dec[20] = -sae.W_dec[30]  # opposite directions are different features
    closest, cosines = redundancy(sae, block=8)
    assert (int(closest[5]), int(closest[9])) == (9, 5)
    assert cosines[5].item() == pytest.approx(1.0, abs=1e-6)
    full = _cosines(sae.W_dec.detach(), sae.W_dec.detach())
    full.fill_diagonal_(-2)
    torch.testing.assert_close(cosines.double(), full.max(1).values, atol=1e-6, rtol=0)
    assert cosines[20] < 0.99 and int(closest[20]) != 30


def test_transcoders_compare_in_the_space_they_write_to():
    transcoder = _sae(32, d_in=12, d_out=10, hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out",
                      apply_b_dec_to_input=False)
    other = _sae(16, d_in=10, seed=3)  # an SAE on the output hook, 10 wide
    comparison = compare_dictionaries(transcoder, other)
    assert comparison.match_a.shape == (32,) and comparison.match_b.shape == (16,)
    with pytest.raises(InputShapeError, match="10-dimensional but others are 12-dimensional"):
        compare_dictionaries(transcoder, _sae(16, d_in=12))


def test_bad_inputs_name_the_problem():
    with pytest.raises(InputShapeError, match=r"float matrix \[n, d\]"):
        nearest_directions(torch.randn(5))
    with pytest.raises(ConfigError, match="no neighbour"):
        nearest_directions(torch.randn(1, 4))
    with pytest.raises(ConfigError, match="n must be"):
        nearest_directions(torch.randn(3, 4), n=0)
    zero = torch.zeros(3, 4)
    zero[0, 0] = 1
    _, cosines = nearest_directions(torch.zeros(2, 4), zero)
    assert torch.equal(cosines, torch.zeros(2, 1))  # a zero direction is like nothing


def test_compare_command_prints_and_writes_what_compare_dictionaries_gives(tmp_path, capsys):
    import json

    from vit_sae_hooks.cli import main

    names = ["vit-sae-hooks/shapes-vit/resid_post/1", "vit-sae-hooks/shapes-vit/resid_post/2"]
    assert main(["compare", *names, "--json", str(tmp_path / "out.json")]) == 0
    printed = capsys.readouterr().out
    a, b = (SAE.from_pretrained(name) for name in names)
    expected = compare_dictionaries(a, b)
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["mmcs"] == pytest.approx(expected.mmcs) and record["match_a"] == expected.match_a.tolist()
    assert f"mean max cosine A->B {expected.mmcs:.4f}, B->A {expected.mmcs_reverse:.4f}" in printed
    assert "512 features at blocks.1.hook_resid_post" in printed
    assert record["duplicate_fraction_a"] == pytest.approx(float((redundancy(a)[1] >= 0.9).double().mean()))
    assert main(["compare", names[0], "no/such-sae"]) == 2
    assert "no/such-sae" in capsys.readouterr().err
