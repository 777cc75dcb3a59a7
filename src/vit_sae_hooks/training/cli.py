"""``vit-sae train`` (and ``python -m vit_sae_hooks.training``, which torchrun launches): train SAEs on hooks.

One run trains every combination of ``--hook`` (repeatable; with ``--hook-out``, transcoders from each
``--hook`` to its ``--hook-out``) and the comma-separated ``--arch``, ``--k``, ``--expansion`` and ``--d-sae``
values, all from one stream of activations: each batch of images runs through the model once.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Subset

from vit_sae_hooks.cli_support import add_config_options, configs_from_args, run_reporting_errors
from vit_sae_hooks.errors import ConfigError, DataError
from vit_sae_hooks.tokens import TOKEN_SETS
from vit_sae_hooks.training import distributed
from vit_sae_hooks.training.config import TrainConfig

if TYPE_CHECKING:
    from vit_sae_hooks.model import HookedViT
    from vit_sae_hooks.sae import SAE
    from vit_sae_hooks.training.cache import CachedActivations


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vit-sae train``, shared by the subcommand and ``python -m vit_sae_hooks.training``.

    The SAE and optimisation options are generated from :class:`TrainConfig`'s fields, one per field.
    """
    data = parser.add_argument_group("data")
    data.add_argument("--model", required=True, help="hub id or local folder of the vision transformer")
    data.add_argument("--hook", "--hook-in", dest="hook", action="append", required=True,
                      help="hook to train on, e.g. blocks.9.hook_resid_post; repeat for one SAE per hook from one pass")
    data.add_argument("--hook-out", action="append",
                      help="the hook a transcoder predicts from --hook (e.g. blocks.9.hook_mlp_out); one per --hook")
    data.add_argument("--images", help="image folder (class subfolders or flat) to take activations from")
    data.add_argument("--tokens", choices=TOKEN_SETS, default="all", help="token set (default all)")
    data.add_argument("--cache-activations", metavar="DIR",
                      help="write the activations here once (or reuse a finished cache) and train from disk")
    data.add_argument("--held-out", type=int, default=256, metavar="N",
                      help="last N images of the folder are not trained on and give the final evaluation (default 256)")
    data.add_argument("--image-batch-size", type=int, default=64, help="images per model forward (default 64)")
    data.add_argument("--buffer-images", type=int, default=256,
                      help="images whose tokens are shuffled together into batches (default 256)")
    data.add_argument("--workers", type=int, default=2, help="image decoding processes (default 2)")
    add_config_options(parser.add_argument_group("SAE and optimisation (TrainConfig)"), TrainConfig, sweeps=True)
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True,
                     help="folder for checkpoints/ and the final SAE (SAELens layout); with several SAEs, one subfolder each")
    run.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                     help="continue from the latest checkpoint in --out (or from CHECKPOINT)")
    run.add_argument("--device", help="torch device (default: cuda if available, under torchrun the local GPU)")
    run.add_argument("--eval-head", help="head for the final evaluation's CE metrics: 'model' or 'zero-shot:FILE'")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def train_command(args: argparse.Namespace) -> int:
    """Run ``vit-sae train``: train, save, then print the held-out evaluation row."""
    from vit_sae_hooks.model import HookedViT
    from vit_sae_hooks.training.activations import ImageActivations
    from vit_sae_hooks.training.cache import CachedActivations, write_activation_cache
    from vit_sae_hooks.training.trainer import train_saes

    device = distributed.init_from_environment()
    if args.device:
        device = torch.device(args.device)
    rank = distributed.rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(levelname)s %(message)s")
    pairs = _hook_pairs(args)
    configs, names = _run_configs(args, pairs)
    config = configs[0]
    model = HookedViT.from_pretrained(args.model, device=device).eval()
    hooks = list(dict.fromkeys(name for pair in pairs for name in pair if name is not None))
    for hook in hooks:
        model.check_hook_name(hook)
    train_images = held_out = None
    if args.images is not None:
        train_images, held_out = _split_images(args.images, model, args.held_out)
    cache = Path(args.cache_activations) if args.cache_activations else None
    if cache is not None and _finished(cache):
        data = CachedActivations(cache)
        _check_cache_matches(data, args, model)
    else:
        if train_images is None:
            raise DataError("no activations to train on: pass --images DIR (and optionally --cache-activations DIR).")
        data = ImageActivations(
            model, hooks, train_images, token_set=args.tokens, images_per_block=args.buffer_images,
            batch_size=args.image_batch_size, num_workers=args.workers,
        )
        if cache is not None:
            n_shards = args.data_shards or distributed.world_size()
            own_shards = list(range(rank, n_shards, distributed.world_size()))
            write_activation_cache(data, cache, config.tokens_budget, parts=n_shards, write_parts=own_shards,
                                   seed=config.seed, progress=not args.quiet and rank == 0)
            distributed.barrier()
            data = CachedActivations(cache)
    outs = [Path(args.out)] if len(configs) == 1 else [Path(args.out) / name for name in names]
    saes = train_saes(data, configs, outs=outs, resume=args.resume, device=device, progress=not args.quiet)
    if rank == 0:
        for sae, out in zip(saes, outs, strict=True):
            reads = sae.hook_name if not sae.is_transcoder else f"{sae.hook_name} -> {sae.hook_name_out}"
            kind = "transcoder" if sae.is_transcoder else "SAE"
            print(f"saved a {sae.cfg.architecture} {kind} ({sae.d_in} -> {sae.d_sae} latents, {reads}, "
                  f"{args.tokens} tokens) to {out}")
            difference = sae.saelens_difference(sae.cfg)
            if difference is not None:
                # The folder is in SAELens layout, which this library reads back exactly; SAELens would not.
                print(f"  load it with vit_sae_hooks (SAE.load): SAELens would load the folder but compute other "
                      f"features, since {difference}")
        _print_evaluation(model, saes, outs, held_out, args)
    return 0


def _hook_pairs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """``(hook read, hook predicted or None)`` per ``--hook``."""
    outs = args.hook_out or []
    if outs and len(outs) != len(args.hook):
        raise ConfigError(
            f"got {len(args.hook)} --hook and {len(outs)} --hook-out; a transcoder needs one --hook-out per --hook "
            "(its input), e.g. --hook blocks.5.ln2.hook_normalized --hook-out blocks.5.hook_mlp_out."
        )
    pairs = list(zip(args.hook, outs or [None] * len(args.hook), strict=True))
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"the hooks {args.hook} repeat; name each hook (or transcoder pair) once.")
    return pairs


def _run_configs(args: argparse.Namespace, pairs: list[tuple[str, str | None]]) -> tuple[list[TrainConfig], list[str]]:
    """One TrainConfig per (hook pair, swept setting), and a folder name for each telling them apart."""
    configs, labels = [], []
    for hook_in, hook_out in pairs:
        for setting in configs_from_args(TrainConfig, args, hook_name=hook_in, hook_name_out=hook_out):
            configs.append(setting)
            labels.append({
                "hook": hook_in if hook_out is None else f"{hook_in}_to_{hook_out}", "arch": setting.architecture,
                "k": f"k{setting.k}", "x": f"x{setting.expansion_factor}" if setting.d_sae is None else f"d{setting.d_sae}",
            })
    varying = [key for key in ("hook", "arch", "k", "x") if len({label[key] for label in labels}) > 1]
    names = ["-".join(label[key] for key in varying) or "sae" for label in labels]
    return configs, names


def _finished(cache: Path) -> bool:
    from vit_sae_hooks.training.cache import CachedActivations

    if not cache.exists():
        return False
    try:
        CachedActivations(cache)
    except DataError:
        return False
    return True


def _check_cache_matches(data: CachedActivations, args: argparse.Namespace, model: HookedViT) -> None:
    hooks = tuple(dict.fromkeys(name for pair in _hook_pairs(args) for name in pair if name is not None))
    wanted = {"hook_names": hooks, "token_set": args.tokens, "model_name": model.cfg.model_name}
    found = {name: getattr(data, name) for name in wanted}
    if found != wanted:
        raise ConfigError(
            f"the activation cache {args.cache_activations} holds {found}, but this run asks for {wanted}; "
            "use another --cache-activations folder or matching --hook/--tokens/--model."
        )


def _split_images(folder: str, model: HookedViT, held_out: int) -> tuple[Subset, Subset | None]:
    from vit_sae_hooks.data import ImageFolder, preprocess_for

    dataset = ImageFolder(folder, transform=preprocess_for(model))
    # At least one image stays for training; the held-out ones are the folder's last.
    held = max(0, min(held_out, len(dataset) - 1))
    train = Subset(dataset, range(len(dataset) - held))
    return train, Subset(dataset, range(len(dataset) - held, len(dataset))) if held else None


def _print_evaluation(
    model: HookedViT, saes: list[SAE], outs: list[Path], held_out: Subset | None, args: argparse.Namespace
) -> None:
    from vit_sae_hooks.evals import EvalResult, evaluate

    if held_out is None:
        print("no held-out images (pass --images with --held-out N > 0) for the final evaluation")
        return
    print(f"evaluation on {len(held_out)} held-out images:")
    print(EvalResult.markdown_header())
    for sae, out in zip(saes, outs, strict=True):
        result = evaluate(
            model, sae.to(next(model.parameters()).device), held_out, head=args.eval_head,
            batch_size=args.image_batch_size, num_workers=args.workers, progress=not args.quiet, sae_name=out.name,
        )
        for row in result.rows():
            print(row.markdown_row())


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``vit-sae train``."""
    parser = commands.add_parser(
        "train", help="train an SAE on a hook of a vision transformer",
        description="Train TopK, BatchTopK, Matryoshka, ReLU, JumpReLU or gated SAEs, or transcoders, on hooks of a "
                    "vision transformer, several from one pass; torchrun -m vit_sae_hooks.training scales it out.",
    )
    add_arguments(parser)
    parser.set_defaults(run=train_command)


def main(argv: list[str] | None = None) -> int:
    """``python -m vit_sae_hooks.training ARGS``: the same options as ``vit-sae train``."""
    parser = argparse.ArgumentParser(prog="python -m vit_sae_hooks.training", description="Train an SAE on a hook.")
    add_arguments(parser)
    return run_reporting_errors(parser.prog, train_command, parser.parse_args(argv))
