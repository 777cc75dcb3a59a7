"""The native CPU top-k (C++ pass over a reused GEMM workspace) against torch.topk and float64 references."""

from __future__ import annotations

import functools
from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vit_sae_hooks import kernels
from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.kernels import encode_topk, native

from helpers.kernel_reference import check_encode_decode, make_encoder_problem

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernel unavailable: {native.status()}")


def _same_selection(values, indices, scores, k):
    """Our (values, indices) are exactly torch.topk's, up to order (continuous data: no ties)."""
    expected = scores.topk(k, dim=1)
    assert torch.equal(indices.sort(dim=1).values, expected.indices.sort(dim=1).values)
    assert torch.equal(values.sort(dim=1).values, expected.values.sort(dim=1).values)


def _merge_in_chunks(scores, bias, k, boundaries):
    n = scores.shape[0]
    values, indices = torch.empty(n, k), torch.empty(n, k, dtype=torch.long)
    filled = torch.zeros(n, dtype=torch.long)
    edges = [0, *sorted(set(boundaries)), scores.shape[1]]
    for start, stop in pairwise(edges):
        native.merge_topk(scores[:, start:stop], None if bias is None else bias[start:stop], start, values, indices, filled)
    assert filled.tolist() == [min(k, scores.shape[1])] * n
    return values, indices


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 200),
    cols=st.integers(1, 3000),
    k_fraction=st.floats(0.0, 1.0),
    n_cuts=st.integers(0, 4),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_merge_over_any_column_split_equals_torch_topk(n, cols, k_fraction, n_cuts, with_bias, seed, data):
    k = max(1, int(k_fraction * cols))
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, cols, generator=generator)
    bias = torch.randn(cols, generator=generator) if with_bias else None
    cuts = data.draw(st.lists(st.integers(1, max(1, cols - 1)), max_size=n_cuts)) if cols > 1 else []
    values, indices = _merge_in_chunks(scores, bias, k, cuts)
    # The kernel adds the bias in float32 exactly as this sum does, so the comparison is exact.
    _same_selection(values, indices, scores if bias is None else scores + bias, k)


@pytest.mark.parametrize("k", [1, 64, 700])
def test_adversarial_orders_are_exact(k):
    """Ascending rows make every column a survivor (worst case for the candidate buffer)."""
    ramp = torch.arange(4000, dtype=torch.float32)
    scores = torch.stack([ramp, ramp.flip(0), ramp[torch.randperm(4000, generator=torch.Generator().manual_seed(0))]])
    values, indices = _merge_in_chunks(scores, None, k, [1000, 1001, 2500])
    _same_selection(values, indices, scores, k)


def test_nan_and_infinity_rank_like_torch_topk():
    scores = torch.randn(6, 300, generator=torch.Generator().manual_seed(1))
    scores[0, 5] = float("nan")
    scores[1, [3, 200]] = float("inf")
    scores[2, :] = float("-inf")
    scores[3, 10:] = float("nan")
    scores[4, 7] = float("-inf")
    for k in (1, 3, 8):
        values, indices = _merge_in_chunks(scores, None, k, [150])
        expected = scores.topk(k, dim=1)
        # NaN first, then +inf, ...: compare the multisets of values (NaN != NaN, so via isnan).
        ours, ref = values.sort(dim=1).values, expected.values.sort(dim=1).values
        assert torch.equal(ours.isnan(), ref.isnan())
        assert torch.equal(ours.nan_to_num(0.0), ref.nan_to_num(0.0))
        distinct_rows = [0, 1, 4, 5]  # no ties in these rows, so the indices are determined
        assert torch.equal(indices[distinct_rows].sort(1).values, expected.indices[distinct_rows].sort(1).values)


def test_equal_values_give_k_distinct_indices():
    scores = torch.zeros(3, 1000)
    values, indices = _merge_in_chunks(scores, None, 50, [333])
    assert torch.equal(values, torch.zeros(3, 50))
    assert all(len(set(row)) == 50 for row in indices.tolist())


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 300),
    d_in=st.integers(1, 37),
    d_sae=st.integers(1, 600),
    k_fraction=st.floats(0.0, 1.0),
    apply_relu=st.booleans(),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_native_backend_matches_dense_reference(n, d_in, d_sae, k_fraction, apply_relu, with_bias, seed):
    k = max(1, int(k_fraction * d_sae))
    encode = functools.partial(encode_topk, backend="native")
    decode = functools.partial(kernels.decode_topk, backend="native")
    check_encode_decode(encode, decode, n, d_in, d_sae, k, torch.float32, seed, apply_relu, with_bias)


def test_row_blocks_under_a_small_workspace_limit_give_the_same_result():
    x, W_enc, b_enc = make_encoder_problem(300, 16, 500, torch.float32, seed=2)
    whole = encode_topk(x, W_enc, b_enc, 9, backend="native")
    previous = native.workspace_limit()
    try:
        native.set_workspace_limit(37 * 500 * 4)  # 37 rows per block, the last one ragged
        assert native._local.workspace is None  # the larger buffer was released
        blocked = encode_topk(x, W_enc, b_enc, 9, backend="native")
        assert native._local.workspace.numel() == 37 * 500
    finally:
        native.set_workspace_limit(previous)
    assert torch.equal(blocked[1].sort(1).values, whole[1].sort(1).values)
    native.free_workspace()
    assert native._local.workspace is None


def test_auto_picks_native_for_float32_cpu_only():
    x, _, _ = make_encoder_problem(4, 8, 64, torch.float32, seed=1)
    assert kernels._kernels_for("auto", x, 4 * 64, None).name == "native"
    assert kernels._kernels_for("auto", x.double(), 4 * 64, None).name == "torch"
    assert kernels._kernels_for("auto", x.bfloat16(), 4 * 64, None).name == "torch"


def test_native_on_other_dtypes_and_bad_limits_are_config_errors():
    x, W_enc, b_enc = make_encoder_problem(4, 8, 64, torch.float64, seed=1)
    with pytest.raises(ConfigError, match=r"backend='native' runs float32 CPU tensors, got torch\.float64"):
        encode_topk(x, W_enc, b_enc, 3, backend="native")
    with pytest.raises(ConfigError, match="positive number of bytes"):
        native.set_workspace_limit(0)


def test_without_the_kernel_auto_falls_back_and_says_why(monkeypatch, tmp_path):
    x, W_enc, b_enc = make_encoder_problem(5, 8, 64, torch.float32, seed=1)
    expected = encode_topk(x, W_enc, b_enc, 3, backend="torch")
    try:
        for variable, value, reason in [
            ("VIT_SAE_HOOKS_NATIVE", "0", "disabled by VIT_SAE_HOOKS_NATIVE=0"),
            ("CXX", str(tmp_path / "no-such-compiler"), "could not build the native top-k kernel"),
            ("VIT_SAE_HOOKS_CACHE", str(tmp_path / "a-file"), "cannot write"),
        ]:
            (tmp_path / "a-file").write_text("not a directory")
            monkeypatch.setenv("VIT_SAE_HOOKS_CACHE", str(tmp_path / "cache"))
            monkeypatch.setenv(variable, value)
            native._build.cache_clear()
            assert not native.available()
            assert reason in native.status()
            assert kernels._kernels_for("auto", x, 5 * 64, None).name == "torch"
            with pytest.raises(ConfigError, match="backend='native' is unavailable"):
                encode_topk(x, W_enc, b_enc, 3, backend="native")
            _, indices = encode_topk(x, W_enc, b_enc, 3)
            assert torch.equal(indices.sort(1).values, expected[1].sort(1).values)
            monkeypatch.delenv(variable)
    finally:
        native._build.cache_clear()


def test_kernel_builds_into_the_configured_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("VIT_SAE_HOOKS_CACHE", str(tmp_path))
    try:
        native._build.cache_clear()
        assert native.available(), native.status()
        built = list((tmp_path / "kernels").glob("topk_merge-*.so"))
        assert len(built) == 1 and str(built[0]) in native.status()
        assert not list((tmp_path / "kernels").glob("tmp*"))  # the build directory was cleaned up
    finally:
        native._build.cache_clear()


_FORK_SCRIPT = """
import os, sys, time, torch
from vit_sae_hooks.kernels import native

def top5():
    scores = torch.randn(256, 300, generator=torch.Generator().manual_seed(4))
    values, indices = torch.empty(256, 5), torch.empty(256, 5, dtype=torch.long)
    native.merge_topk(scores, None, 0, values, indices, torch.zeros(256, dtype=torch.long))
    return indices.sort(1).values.tolist()

torch.set_num_threads(2)
expected = top5()  # the thread pool exists from here on
time.sleep(0.5)  # let its idle workers check in, as they would in a real program
child = os.fork()
if child == 0:
    os._exit(0 if top5() == expected else 1)
sys.exit(os.waitpid(child, 0)[1])
"""


def test_forked_child_merges_with_its_own_threads():
    """A fork after the thread pool exists must not leave the child waiting on the parent's threads.

    Only the native pass runs in the child: torch's own OpenMP GEMM is not fork-safe (DataLoader
    workers drop to one thread for that reason), but the native pass brings its own threads.
    """
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], timeout=60, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_workspace_made_under_inference_mode_serves_later_training_calls():
    native.free_workspace()
    x, W_enc, b_enc = make_encoder_problem(10, 8, 64, torch.float32, seed=6)
    with torch.inference_mode():
        expected = encode_topk(x, W_enc, b_enc, 3, backend="native")[1]
    W_enc.requires_grad_(True)
    values, indices = encode_topk(x, W_enc, b_enc, 3, backend="native")
    values.sum().backward()
    assert torch.equal(indices, expected)
    assert W_enc.grad is not None and int((W_enc.grad != 0).any(0).sum()) == len(set(indices.flatten().tolist()))
    with torch.inference_mode():  # and back: the normal workspace is writable inside inference mode too
        assert torch.equal(encode_topk(x, W_enc, b_enc, 3, backend="native")[1], expected)


def test_merge_rejects_layouts_it_would_misread():
    block = torch.randn(4, 32)
    values, indices, filled = torch.empty(4, 3), torch.empty(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    bad_calls = [
        ({"block": block.double()}, "float32 CPU block"),
        ({"block": block.t()}, "unit column stride"),
        ({"values": torch.empty(3, 4).t()}, "values must be a contiguous torch.float32"),
        ({"indices": torch.empty(4, 3, dtype=torch.int32)}, "indices must be a contiguous torch.int64"),
        ({"filled": torch.zeros(5, dtype=torch.long)}, r"filled must be .* of shape \(4,\)"),
        ({"values": torch.empty(4, 0), "indices": torch.empty(4, 0, dtype=torch.long)}, "k >= 1"),
        ({"bias": torch.randn(31)}, "bias has shape"),
    ]
    for change, message in bad_calls:
        arguments = {"block": block, "bias": None, "col_offset": 0, "values": values, "indices": indices, "filled": filled}
        arguments |= change
        with pytest.raises(ConfigError, match=message):
            native.merge_topk(**arguments)
