"""Video transformers (ViViT, V-JEPA 2, TimeSformer) load exactly, their tokens' (frame, row, column) are known,
and hooks, token sets, splicing, heatmaps, evaluation and training work on clips."""

from __future__ import annotations

import pytest
import torch
import transformers

from vit_sae_hooks import SAE, HookedViT, SAEConfig
from vit_sae_hooks.tokens import TokenSelection
from vit_sae_hooks.viz import feature_heatmap

from helpers import assert_every_hook_fires_once_and_matters, randomise_defaults

TOLERANCE = 1e-4
BASE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _vivit(cls=transformers.VivitModel, **extra):
    return cls(transformers.VivitConfig(**BASE, image_size=32, num_frames=4, tubelet_size=[2, 8, 8], **extra))


def _vjepa2(cls=transformers.VJEPA2Model):
    config = transformers.VJEPA2Config(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=2, crop_size=32, patch_size=8, frames_per_clip=4,
        tubelet_size=2, mlp_ratio=2.0, pred_hidden_size=24, pred_num_attention_heads=2, pred_num_hidden_layers=1,
        num_pooler_layers=1, **({"num_labels": 5} if cls is not transformers.VJEPA2Model else {}),
    )
    return cls(config)


def _timesformer(attention_type="divided_space_time", cls=transformers.TimesformerModel, **extra):
    config = transformers.TimesformerConfig(
        **BASE, image_size=32, patch_size=8, num_frames=3, attention_type=attention_type, **extra
    )
    return cls(config)


def _pooled(model, clips):
    return model(pixel_values=clips).pooler_output


def _normed_tokens(model, clips):
    return model(pixel_values=clips).last_hidden_state


def _logits(model, clips):
    return model(pixel_values=clips).logits


# name -> (builder, HF output the model's default return type must equal, clip lengths, our return type)
FAMILIES = {
    "vivit": (_vivit, _pooled, [4], "output"),
    "vivit_classifier": (lambda: _vivit(transformers.VivitForVideoClassification, num_labels=5), _logits, [4], "output"),
    "vjepa2": (_vjepa2, lambda m, v: m(pixel_values_videos=v, skip_predictor=True).last_hidden_state, [4, 6, 1, 5], "tokens"),
    "timesformer_divided": (_timesformer, _normed_tokens, [3], "tokens"),
    "timesformer_joint": (lambda: _timesformer("joint_space_time"), _normed_tokens, [3], "tokens"),
    "timesformer_classifier": (
        lambda: _timesformer(cls=transformers.TimesformerForVideoClassification, num_labels=5), _logits, [3], "output"
    ),
}


def _hidden_states(name, hf_model, clips):
    if name.startswith("vjepa2"):
        return hf_model(pixel_values_videos=clips, skip_predictor=True, output_hidden_states=True).hidden_states
    tower = getattr(hf_model, "vivit", None) or getattr(hf_model, "timesformer", None) or hf_model
    return tower(pixel_values=clips, output_hidden_states=True).hidden_states


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    models = {}
    for index, (name, (build, _, _, _)) in enumerate(FAMILIES.items()):
        torch.manual_seed(index)
        hf_model = randomise_defaults(build(), seed=index).eval()
        folder = tmp_path_factory.mktemp(name)
        hf_model.save_pretrained(folder)
        models[name] = (hf_model, folder)
    return models


def _clips(frames: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_block_and_the_output_match_transformers(name, saved):
    hf_model, folder = saved[name]
    model = HookedViT.from_pretrained(folder)
    _, expected_output, clip_lengths, return_type = FAMILIES[name]
    for frames in clip_lengths:
        clips = _clips(frames, seed=frames)
        with torch.no_grad():
            hidden_states = _hidden_states(name, hf_model, clips)
            expected = expected_output(hf_model, clips)
        _, cache = model.run_with_cache(clips, names_filter=lambda hook: hook.endswith("hook_resid_post"))
        assert len(hidden_states) == model.cfg.n_layers + 1
        for layer in range(model.cfg.n_layers):
            ours = cache[f"blocks.{layer}.hook_resid_post"]
            torch.testing.assert_close(ours, hidden_states[layer + 1], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(model(clips, return_type=return_type), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["vivit", "vjepa2", "timesformer_divided"])
def test_every_hook_fires_once_and_every_edit_changes_the_output(name, saved):
    model = HookedViT.from_pretrained(saved[name][1])
    assert_every_hook_fires_once_and_matters(model, _clips(FAMILIES[name][2][0]))


@pytest.mark.parametrize("name", ["vivit", "vjepa2", "timesformer_divided"])
def test_every_tokens_frame_row_and_column_are_known(name, saved):
    # Changing one frame's pixels in one patch changes exactly the embedding rows the layout says are there.
    model = HookedViT.from_pretrained(saved[name][1])
    frames = FAMILIES[name][2][0]
    clips = _clips(frames)
    _, clean = model.run_with_cache(clips, names_filter="hook_embed")
    layout = model.token_layout
    tubelet = model.cfg.tubelet_size
    for frame, row, column in [(frames - 1, 0, 1), (0, 3, 2)]:
        edited_clips = clips.clone()
        edited_clips[:, frame, :, row * 8 : row * 8 + 8, column * 8 : column * 8 + 8] += 5.0
        _, edited = model.run_with_cache(edited_clips, names_filter="hook_embed")
        changed = (edited["hook_embed"] - clean["hook_embed"]).abs().amax((0, 2)) > 1e-4
        positions = changed.nonzero().flatten()
        assert len(positions) == 1, positions
        time, grid_index = layout.patch_coordinates(positions)
        assert (int(time), int(grid_index)) == (frame // tubelet, row * 4 + column)
        assert int(positions) in layout.frame_positions(frame // tubelet).tolist()


def test_per_frame_token_sets_splice_only_that_frame(saved):
    model = HookedViT.from_pretrained(saved["timesformer_divided"][1])
    clips = _clips(3)
    model(clips)
    layout = model.token_layout
    assert TokenSelection.resolve("patches", 1 + 48, layout).positions.numel() == 48  # 16 patches x 3 frames
    second_frame = torch.zeros(1 + 48, dtype=torch.bool)
    second_frame[layout.frame_positions(1)] = True
    sae = SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4, hook_name="blocks.0.hook_resid_post"))
    _, clean = model.run_with_cache(clips, names_filter="blocks.0.hook_resid_post")
    with model.saes([sae], tokens=second_frame):
        _, spliced = model.run_with_cache(clips, names_filter="blocks.0.hook_resid_post")
    changed = (spliced["blocks.0.hook_resid_post"] - clean["blocks.0.hook_resid_post"]).abs().amax((0, 2)) > 0
    assert torch.equal(changed, second_frame)


def test_heatmaps_come_one_per_frame(saved):
    model = HookedViT.from_pretrained(saved["vivit"][1])
    sae = SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=8, hook_name="blocks.1.hook_resid_post", token_set="patches"))
    clip = _clips(4, batch=1)[0]
    heatmap = feature_heatmap(model, sae, clip, feature=3)
    assert heatmap.shape == (2, 4, 4)  # 4 frames in tubelets of 2, a 4 x 4 grid
    _, cache = model.run_with_cache(clip[None], names_filter="blocks.1.hook_resid_post")
    acts = sae.encode(cache["blocks.1.hook_resid_post"][0, 1:])[:, 3]  # time-major tokens after the CLS
    torch.testing.assert_close(heatmap.flatten(), acts.detach())


@pytest.mark.parametrize("name", ["vivit", "vjepa2", "timesformer_divided"])
def test_saes_train_splice_and_evaluate_on_clips(name, saved):
    from vit_sae_hooks.evals import evaluate
    from vit_sae_hooks.training import ImageActivations, TrainConfig, train_sae

    model = HookedViT.from_pretrained(saved[name][1])
    clips = _clips(FAMILIES[name][2][0], batch=4)
    tokens = "patches" if model.cfg.n_prefix_tokens else "all"
    data = ImageActivations(model, "blocks.0.hook_resid_post", list(clips), token_set=tokens, images_per_block=4, batch_size=2)
    config = TrainConfig(k=4, d_sae=64, batch_size=16, tokens_budget=64, init_tokens=32, warmup_steps=0, log_every=1)
    sae = train_sae(data, config, progress=False)
    clean = model(clips, return_type="tokens")
    with torch.no_grad():
        torch.testing.assert_close(model.run_with_saes(clips, saes=[sae], use_error_term=True, return_type="tokens"), clean,
                                   atol=1e-5, rtol=0)
    result = evaluate(model, sae, clips, head=None, batch_size=2, downstream=False, progress=False)
    assert result.n_tokens == 4 * model.cfg.n_patches and 0 < result.metrics["avg_l0"] <= 4


def test_clips_of_the_wrong_shape_say_what_the_model_reads(saved):
    from vit_sae_hooks.errors import InputShapeError

    model = HookedViT.from_pretrained(saved["vivit"][1])
    with pytest.raises(InputShapeError, match=r"video model: pass clips \[batch, frames, channels, height, width\]"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(InputShapeError, match=r"clips have 3 frames but .* reads exactly 4"):
        model(torch.randn(1, 3, 3, 32, 32))
    # Other frame sizes: transformers' own ViViT resampling reshapes the whole space-time table as one square
    # grid, which fails with more than one time position; the refusal says so instead of inventing positions.
    hf_model = saved["vivit"][0]
    with pytest.raises(RuntimeError), torch.no_grad():
        hf_model(pixel_values=torch.randn(1, 4, 3, 48, 48), interpolate_pos_encoding=True)
    with pytest.raises(InputShapeError, match=r"frames are 48x48 .* resize them.*single time position"):
        model(torch.randn(1, 4, 3, 48, 48), interpolate_pos_encoding=True)
