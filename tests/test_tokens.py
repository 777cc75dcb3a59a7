"""Token sets: one resolution, checked against plain indexing and against each other (mask, rows, positions)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vit_sae_hooks.errors import ConfigError, InputShapeError
from vit_sae_hooks.hook_names import activation_shape, additive_boundary, split_block_hook, stop_layer
from vit_sae_hooks.model import HookedViTConfig
from vit_sae_hooks.tokens import TOKEN_SETS, TokenLayout, TokenSelection, check_token_set, select_tokens


@st.composite
def sequences(draw):
    n_prefix = draw(st.integers(0, 3))
    has_cls = n_prefix > 0 and draw(st.booleans())
    n_patches = draw(st.integers(1, 6))
    batch = draw(st.integers(1, 3))
    n_pos = n_prefix + n_patches
    kind = draw(st.sampled_from(["named", "positions", "pos-mask", "batch-mask"]))
    if kind == "named":
        spec = draw(st.sampled_from([name for name in TOKEN_SETS if has_cls or name != "cls"]))
    elif kind == "positions":
        spec = draw(st.lists(st.integers(-n_pos, n_pos - 1), min_size=0, max_size=n_pos, unique=True))
    elif kind == "pos-mask":
        spec = torch.tensor(draw(st.lists(st.booleans(), min_size=n_pos, max_size=n_pos)))
    else:
        rows = st.lists(st.booleans(), min_size=n_pos, max_size=n_pos)
        spec = torch.tensor(draw(st.lists(rows, min_size=batch, max_size=batch)))
    return TokenLayout(n_prefix, has_cls), n_pos, batch, spec


def _expected_mask(spec, layout: TokenLayout, n_pos: int, batch: int) -> torch.Tensor:
    """The selection written out position by position, independently of TokenSelection."""
    mask = torch.zeros(batch, n_pos, dtype=torch.bool)
    for position in range(n_pos):
        if isinstance(spec, str):
            is_patch = position >= layout.n_prefix_tokens
            mask[:, position] = spec == "all" or (spec == "cls" and position == 0) or (spec == "patches" and is_patch)
        elif isinstance(spec, list):
            mask[:, position] = position in [p % n_pos for p in spec]
        elif spec.ndim == 1:
            mask[:, position] = bool(spec[position])
        else:
            mask[:, position] = spec[:, position]
    return mask


@settings(max_examples=200, deadline=None)
@given(sequences())
def test_a_selection_is_one_set_of_tokens_whichever_way_it_is_read(case) -> None:
    layout, n_pos, batch, spec = case
    selection = TokenSelection.resolve(spec, n_pos, layout)
    expected = _expected_mask(spec, layout, n_pos, batch)
    assert torch.equal(selection.mask(batch), expected)
    x = torch.randn(batch, n_pos, 5)
    torch.testing.assert_close(selection.rows(x), x[expected])
    assert torch.equal(selection.row_positions(batch), expected.nonzero())
    replaced = selection.replace_rows(x, torch.zeros_like(selection.rows(x)))
    torch.testing.assert_close(replaced, torch.where(expected[..., None], 0.0, x))
    if not selection.per_image:
        assert torch.equal(selection.positions, expected[0].nonzero().flatten())
        torch.testing.assert_close(selection.put(x, selection.take(x) + 1), torch.where(expected[..., None], x + 1, x))


def test_select_tokens_flattens_image_by_image() -> None:
    activations = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    torch.testing.assert_close(select_tokens(activations, "patches", n_prefix_tokens=2), activations[:, 2:].reshape(-1, 3))
    torch.testing.assert_close(select_tokens(activations, "cls", n_prefix_tokens=2), activations[:, 0])
    pooled = torch.randn(4, 3)
    assert select_tokens(pooled, "all", 1) is pooled
    with pytest.raises(ConfigError, match="one vector per image"):
        select_tokens(pooled, "cls", 1)


def test_bad_token_specs_say_what_is_allowed() -> None:
    layout = TokenLayout(1)
    with pytest.raises(ConfigError, match=r"'registers' is not one of \('all', 'cls', 'patches'\)"):
        TokenSelection.resolve("registers", 5, layout)
    with pytest.raises(ConfigError, match="needs a model with a CLS token"):
        TokenSelection.resolve("cls", 5, TokenLayout(0, has_cls_token=False))
    with pytest.raises(InputShapeError, match=r"out of range for 5 tokens"):
        TokenSelection.resolve([5], 5, layout)
    with pytest.raises(InputShapeError, match=r"shape \[pos\] or \[batch, pos\] with pos=5"):
        TokenSelection.resolve(torch.ones(4, dtype=torch.bool), 5, layout)
    with pytest.raises(ConfigError, match="must be integers"):
        TokenSelection.resolve([0.5], 5, layout)
    with pytest.raises(InputShapeError, match="3 rows but the batch has 2 images"):
        TokenSelection.resolve(torch.ones(3, 5, dtype=torch.bool), 5, layout).mask(2)
    with pytest.raises(ConfigError, match=r"token_set 'x' is not one of"):
        check_token_set("x", "token_set")


def test_hook_names_are_parsed_in_one_place() -> None:
    assert split_block_hook("blocks.11.attn.hook_z") == (11, "attn.hook_z") and split_block_hook("hook_pooled") is None
    assert stop_layer("blocks.1.hook_resid_post") == 2 and stop_layer("ln_pre.hook_normalized") == 0
    assert stop_layer("hook_output") is None
    assert additive_boundary("blocks.3.hook_resid_pre") == 3 and additive_boundary("blocks.3.hook_mlp_out") == 4
    assert additive_boundary("blocks.3.hook_attn_out") is None and additive_boundary("hook_pooled") is None
    cfg = HookedViTConfig(
        n_layers=2, d_model=32, n_heads=4, d_mlp=64, image_size=16, patch_size=4, head_type="linear", d_output=7
    )
    assert activation_shape(cfg, "blocks.0.attn.hook_z") == ((4, 8), True)
    assert activation_shape(cfg, "blocks.0.mlp.hook_post") == ((64,), True)
    assert activation_shape(cfg, "hook_output") == ((7,), False)
    assert activation_shape(cfg, "blocks.1.ln2.hook_scale") == ((1,), True)
