"""``vit-sae browse``: write the static feature browser of an SAE over an image folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from vit_sae_hooks.errors import ConfigError


def parse_features(text: str) -> str | int | list[int]:
    """``--features``: ``all``, a number ``N`` (features 0..N-1), or ids and ranges such as ``3,17,40-49``.

    A single id needs its comma (``17,``), since ``17`` alone means the first 17 features.

    Example:
        >>> parse_features("3,17,40-42")
        [3, 17, 40, 41, 42]
    """
    text = text.strip()
    if text == "all":
        return text
    try:
        if "," not in text and "-" not in text:
            return int(text)
        ids: list[int] = []
        for part in filter(None, (piece.strip() for piece in text.split(","))):
            first, _, last = part.partition("-")
            ids += range(int(first), int(last or first) + 1)
        return ids
    except ValueError as error:
        raise ConfigError(
            f"--features {text!r} is not 'all', a number of features, or ids and ranges such as '3,17,40-49' ({error})"
        ) from error


def _text_labels(path: str | None) -> list[str] | None:
    if path is None:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"--labels {path!r} is not a file; pass a text file with one label per line")
    labels = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not labels:
        raise ConfigError(f"--labels {path!r} holds no labels; write one label per line")
    return labels


def run_browse(args: argparse.Namespace) -> int:
    """Build the site and print where to open it."""
    from vit_sae_hooks.model import HookedViT
    from vit_sae_hooks.sae import SAE
    from vit_sae_hooks.sae.config import dtype_from_name
    from vit_sae_hooks.viz.site.build import build_site

    features = parse_features(args.features)
    text_labels = _text_labels(args.labels)
    model = HookedViT.from_pretrained(args.model, device=args.device, dtype=dtype_from_name(args.dtype)).eval()
    sae = SAE.from_pretrained(args.sae, device=args.device).eval()
    site = build_site(
        model, sae, args.images, args.out, top=args.top, features=features, limit=args.limit, text_labels=text_labels,
        text_model=args.text_model, templates=args.templates, batch_size=args.batch_size, num_workers=args.num_workers,
        per_token=args.per_token, similar=args.similar, sae_name=args.sae, progress=not args.quiet,
    )
    print(f"Feature browser of {site.n_features} features ({site.n_dead} dead) over {site.n_images} images "
          f"written to {site.folder}")
    print(f"Open {site.url}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``vit-sae browse``."""
    parser = commands.add_parser(
        "browse", help="write a static feature browser of an SAE over images (open SITE/index.html from disk)",
        description="One pass over the images; the site needs no server and loads nothing from the network. "
                    "See docs/visualisation.md.",
    )
    parser.add_argument("--model", required=True, help="hub id or local folder of the base model")
    parser.add_argument("--sae", required=True, help="registry short name, hub id or local path of the SAE")
    parser.add_argument("--images", required=True, help="image folder: class subfolders (ImageNet layout) or images")
    parser.add_argument("--out", required=True, help="the site's folder (new, empty, or an earlier site to replace)")
    parser.add_argument("--top", type=int, default=16, help="top images per feature (default: 16)")
    parser.add_argument("--features", default="all",
                        help="all, N (features 0..N-1), or ids and ranges such as 3,17,40-49 (default: all)")
    parser.add_argument("--limit", type=int, help="use at most this many images (spread over the classes)")
    parser.add_argument("--labels", metavar="FILE",
                        help="text labels, one per line, to match features against (needs a CLIP, SigLIP or "
                             "MetaCLIP 2 text tower)")
    parser.add_argument("--text-model", help="image-text checkpoint (CLIP, SigLIP, MetaCLIP 2) whose text tower embeds "
                                             "--labels (default: --model)")
    parser.add_argument("--templates", default="photo",
                        help="prompt templates for --labels: openai, simple, photo or name (default: photo)")
    parser.add_argument("--per-token", type=int, default=16, help="features listed per token in the image view")
    parser.add_argument("--similar", type=int, default=8, help="most similar decoder directions listed per feature")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=None, help="image decoding workers (default: CPU count, max 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_browse)
