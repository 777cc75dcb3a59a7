"""``vit-sae eval``: print the published metric row of an SAE (or of every registry SAE of a model)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vit_sae_hooks.errors import ConfigError
from vit_sae_hooks.tokens import TOKEN_SETS


def _load_head_argument(args: argparse.Namespace) -> str | None:
    """The ``head`` argument for evaluate, building and saving the zero-shot head first if asked to."""
    head = args.head
    if head is None or not head.startswith("zero-shot:"):
        if args.build_head:
            raise ConfigError("--build-head needs --head zero-shot:FILE, the file to write the head to")
        return head
    path = Path(head.removeprefix("zero-shot:")).expanduser()
    if not path.exists() and args.build_head:
        from vit_sae_hooks.evals.heads import build_zero_shot_head

        source = args.model if args.build_head == "model" else args.build_head
        print(f"building the zero-shot head from {source} into {path}", file=sys.stderr)
        build_zero_shot_head(source, _class_names(args), templates=args.templates, device=args.device).save(path)
    return head


def _class_names(args: argparse.Namespace) -> list[str] | None:
    """Class names for --build-head: the shipped ImageNet names, the --images class folders, or a file's lines."""
    if args.classes == "imagenet":
        return None
    if args.classes == "folder":
        from vit_sae_hooks.data import ImageFolder

        return ImageFolder(args.images).classes
    path = Path(args.classes).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--classes {args.classes!r} is not 'imagenet', 'folder' or an existing file with one class name per line"
        )
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _sae_names(args: argparse.Namespace) -> list[str]:
    from vit_sae_hooks.sae import pretrained

    if not args.sweep:
        if not args.sae:
            raise ConfigError("pass --sae NAME_OR_ID_OR_PATH, or --sweep to evaluate every registry SAE of --model")
        return [args.sae]
    entries = pretrained.find(model=args.model)
    if not entries:
        models = sorted({entry.model_name for entry in pretrained.all_entries()})
        raise ConfigError(f"the registry has no SAEs for model {args.model!r}; --sweep works for {models}")
    return [entry.name for entry in entries]


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate the SAE(s) and print the markdown table."""
    from vit_sae_hooks.data import Preprocess, image_loader, preprocess_for
    from vit_sae_hooks.evals.evaluate import EvalResult, evaluate, format_row
    from vit_sae_hooks.model import HookedViT
    from vit_sae_hooks.sae import SAE, pretrained
    from vit_sae_hooks.sae.config import dtype_from_name

    dtype = dtype_from_name(args.dtype)
    names = _sae_names(args)
    head = _load_head_argument(args)
    model = HookedViT.from_pretrained(args.model, device=args.device, dtype=dtype)
    preprocess = preprocess_for(args.model)
    if args.resize_mode and args.resize_mode != preprocess.resize_mode:
        preprocess = Preprocess(
            preprocess.image_size, preprocess.mean, preprocess.std, preprocess.resize_size, preprocess.interpolation,
            args.resize_mode,
        )
    loader = image_loader(args.images, preprocess, batch_size=args.batch_size, num_workers=args.num_workers, limit=args.limit)
    print(EvalResult.markdown_header())
    sys.stdout.flush()
    records = []
    for name in names:
        sae = SAE.from_pretrained(name, device=args.device)
        result = evaluate(
            model, sae, loader, head=head, tokens=args.tokens, zero_ablation=args.zero_ablation,
            use_logit_scale=args.logit_scale, sae_name=name, progress=not args.quiet,
        )
        for row in result.rows():  # a Matryoshka SAE's inner prefixes follow it
            print(row.markdown_row(variant=args.variant))
        record = result.to_dict()
        entry = pretrained.lookup(name) if args.compare_published else None
        if entry is not None:
            print(format_row(f"{name} (published)", result.hook_name, entry.tokens, entry.metrics))
            record["published"] = dict(entry.metrics)
        sys.stdout.flush()
        records.append(record)
    if args.json:
        Path(args.json).write_text(json.dumps(records if args.sweep else records[0], indent=2))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``vit-sae eval``."""
    parser = commands.add_parser(
        "eval", help="measure an SAE's published metrics (explained variance, L0, CE recovered, ...) on images",
        description="Print a markdown row in the published Prisma / CLIP-Scope column order; see docs/metrics.md.",
    )
    parser.add_argument("--model", required=True, help="hub id or local folder of the base model")
    parser.add_argument("--sae", help="registry short name, hub id or local path of the SAE")
    parser.add_argument("--images", required=True, help="image folder: class subfolders (ImageNet layout) or images")
    parser.add_argument("--head", help="'zero-shot:FILE' (a saved zero-shot head) or 'model' (the model's classifier)")
    parser.add_argument("--build-head", metavar="TEXT_MODEL_ID", nargs="?", const="model",
                        help="build the zero-shot head into the --head file if missing, from the text tower of "
                             "TEXT_MODEL_ID (CLIP, SigLIP, SigLIP 2, MetaCLIP 2; default: --model)")
    parser.add_argument("--classes", default="imagenet",
                        help="class names for --build-head: imagenet (shipped), folder (the --images class folders) or FILE")
    parser.add_argument("--templates", default="openai", help="prompt templates for --build-head: openai, simple, photo, name")
    parser.add_argument("--tokens", choices=TOKEN_SETS, help="token set (default: the SAE's own)")
    parser.add_argument("--zero-ablation", choices=("tokens", "all"), default="tokens",
                        help="zero the hook on the SAE's tokens (default) or on all tokens")
    parser.add_argument("--logit-scale", action="store_true", help="multiply zero-shot logits by CLIP's logit scale")
    parser.add_argument("--variant", choices=("definitions", "prisma"), default="definitions",
                        help="'prisma' fills EV, cos sim and Avg L0 with Prisma's code's estimators (docs/metrics.md)")
    parser.add_argument("--resize-mode", choices=("shortest", "squash"),
                        help="override the checkpoint's resize (Prisma's evaluation squashes to the square size)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=None, help="image decoding workers (default: CPU count, max 8)")
    parser.add_argument("--limit", type=int, help="evaluate at most this many images (spread over the classes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", metavar="OUT", help="also write the results (and published metrics) as JSON")
    parser.add_argument("--compare-published", action="store_true", help="print the published row under each registry SAE")
    parser.add_argument("--sweep", action="store_true", help="evaluate every registry SAE of --model and print the table")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_eval)


def run_compare(args: argparse.Namespace) -> int:
    """Compare two SAEs' dictionaries and print the summary (and write the matches as JSON)."""
    from vit_sae_hooks.evals.dictionary import compare_dictionaries, redundancy
    from vit_sae_hooks.sae import SAE

    a, b = SAE.from_pretrained(args.sae_a), SAE.from_pretrained(args.sae_b)
    comparison = compare_dictionaries(a, b)
    summary = comparison.summary()
    duplicates = {name: float((redundancy(sae)[1] >= args.duplicate).double().mean()) for name, sae in (("a", a), ("b", b))}
    print(f"A: {args.sae_a} ({a.d_sae} features at {a.output_hook_name})")
    print(f"B: {args.sae_b} ({b.d_sae} features at {b.output_hook_name})")
    print(f"mean max cosine A->B {summary['mmcs']:.4f}, B->A {summary['mmcs_reverse']:.4f}")
    print(f"A features with a match in B at cosine >= 0.9: {100 * summary['fraction_above_0.9']:.1f} %, "
          f">= 0.7: {100 * summary['fraction_above_0.7']:.1f} %; one-to-one pairs: {100 * summary['mutual_fraction']:.1f} %")
    print(f"near-duplicates within each (another feature at cosine >= {args.duplicate}): "
          f"A {100 * duplicates['a']:.2f} %, B {100 * duplicates['b']:.2f} %")
    if args.json:
        record = {"a": args.sae_a, "b": args.sae_b, **summary, "duplicate_threshold": args.duplicate,
                  "duplicate_fraction_a": duplicates["a"], "duplicate_fraction_b": duplicates["b"],
                  "match_a": comparison.match_a.tolist(), "cosine_a": comparison.cosine_a.tolist(),
                  "match_b": comparison.match_b.tolist(), "cosine_b": comparison.cosine_b.tolist()}
        Path(args.json).write_text(json.dumps(record))
    return 0


def register_compare(commands: argparse._SubParsersAction) -> None:
    """Add ``vit-sae compare``."""
    parser = commands.add_parser(
        "compare", help="how far two SAEs learned the same features (decoder cosines: MMCS, one-to-one pairs)",
        description="Match each feature of A to its closest decoder direction in B and back; see docs/metrics.md.",
    )
    parser.add_argument("sae_a", help="registry short name, hub id or local path of SAE A")
    parser.add_argument("sae_b", help="registry short name, hub id or local path of SAE B")
    parser.add_argument("--duplicate", type=float, default=0.9,
                        help="cosine at which two features of one SAE count as near-duplicates (default 0.9)")
    parser.add_argument("--json", metavar="OUT", help="also write the summary and every feature's match as JSON")
    parser.set_defaults(run=run_compare)


def run_probe(args: argparse.Namespace) -> int:
    """Sparse-probe an SAE's features on labelled image folders and print the table."""
    from vit_sae_hooks.evals.probing import sparse_probing
    from vit_sae_hooks.model import HookedViT
    from vit_sae_hooks.sae import SAE

    ks = [int(k) for k in args.k.split(",") if k.strip()]
    model = HookedViT.from_pretrained(args.model, device=args.device)
    sae = SAE.from_pretrained(args.sae, device=args.device)
    result = sparse_probing(
        model, sae, args.train, args.test, ks=ks, pooling=args.pooling, baseline=not args.no_baseline,
        seed=args.seed, batch_size=args.batch_size, limit=args.limit, num_workers=args.num_workers,
        tasks=args.tasks.split(",") if args.tasks else None, progress=not args.quiet,
    )
    print(f"sparse probing of {args.sae} at {sae.output_hook_name} ({len(result.tasks)} one-against-rest tasks, "
          f"{args.pooling} over {sae.token_set} tokens)")
    print(result.markdown())
    if args.json:
        Path(args.json).write_text(json.dumps({"sae": args.sae, "model": args.model, **result.to_dict()}, indent=2))
    return 0


def register_probe(commands: argparse._SubParsersAction) -> None:
    """Add ``vit-sae probe``."""
    parser = commands.add_parser(
        "probe", help="sparse probing: how well k of an SAE's features tell image classes apart (SAEBench-style)",
        description="For each class against the rest, fit a logistic regression on the k features whose mean "
                    "differs most on --train and measure it on --test; see docs/metrics.md.",
    )
    parser.add_argument("--model", required=True, help="hub id or local folder of the base model")
    parser.add_argument("--sae", required=True, help="registry short name, hub id or local path of the SAE")
    parser.add_argument("--train", required=True, help="image folder with class sub-folders to choose features and fit on")
    parser.add_argument("--test", required=True, help="image folder with the same class sub-folders to measure on")
    parser.add_argument("--k", default="1,2,5", help="feature counts, comma-separated (default 1,2,5)")
    parser.add_argument("--pooling", choices=("mean", "max"), default="mean", help="image level of a feature")
    parser.add_argument("--tasks", help="comma-separated class names to probe (default: every class)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the dense probe on the SAE's input")
    parser.add_argument("--seed", type=int, default=0, help="seed of the balanced negative draws")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=None, help="image decoding workers")
    parser.add_argument("--limit", type=int, help="use at most this many images of each folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="OUT", help="also write the accuracies, per task, and chosen features as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_probe)
