"""A tiny random CLIP (text and vision towers, tokenizer, image processor) saved as a hub checkpoint would be,
built offline: for zero-shot heads and anything else that needs a text tower."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-to-unicode alphabet (each byte, alone and word-final) plus the two special tokens: no merges needed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    remaining = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(remaining))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def _byte_level_tokenizer(folder: Path):
    """CLIP's tokenizer over :func:`byte_level_vocab`, its files written to ``folder`` (created)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = byte_level_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return vocab, CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def save_tiny_clip(folder: Path) -> Path:
    """A random CLIPModel (32-wide towers, 32 px images in 8 px patches, 16-d embeddings) with its tokenizer and
    image processor, written to ``folder``."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab, tokenizer = _byte_level_tokenizer(folder)
    end = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=40, eos_token_id=end,
                         bos_token_id=vocab["<|startoftext|>"], pad_token_id=end),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_tiny_image_text_model(folder: Path, kind: str) -> Path:
    """A random ``SiglipModel`` ("siglip"), ``Siglip2Model`` ("siglip2") or ``MetaClip2Model`` ("metaclip2") with
    32-wide towers and CLIP's byte-level tokenizer (any tokenizer serves a random text tower), written to ``folder``."""
    import transformers

    vocab, tokenizer = _byte_level_tokenizer(folder)
    end = vocab["<|endoftext|>"]
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=24, pad_token_id=end, bos_token_id=vocab["<|startoftext|>"], eos_token_id=end)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
    if kind == "siglip":
        model_class, config = transformers.SiglipModel, transformers.SiglipConfig(
            text_config=text, vision_config={**vision, "image_size": 32})
    elif kind == "siglip2":
        model_class, config = transformers.Siglip2Model, transformers.Siglip2Config(
            text_config=text, vision_config={**vision, "num_patches": 16})
    else:
        model_class, config = transformers.MetaClip2Model, transformers.MetaClip2Config(
            text_config=text, vision_config={**vision, "image_size": 32}, projection_dim=16)
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
        if getattr(model, "logit_bias", None) is not None:
            model.logit_bias.fill_(-4.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
