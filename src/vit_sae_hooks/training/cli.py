"""``vit-sae train`` (and ``python -m vit_sae_hooks.train``, which torchrun launches): train an SAE on a hook."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Subset

from vit_sae_hooks.errors import ConfigError, DataError
from vit_sae_hooks.training import distributed
from vit_sae_hooks.training.config import TrainConfig

if TYPE_CHECKING:
    from vit_sae_hooks import SAE, HookedViT
    from vit_sae_hooks.training.cache import CachedActivations

# "relu" is what users call the standard architecture.
_ARCHITECTURES = {"topk": "topk", "relu": "standard", "standard": "standard", "jumprelu": "jumprelu"}


def _count(text: str) -> int:
    # Budgets are easier to write as 2e6 than as 2000000.
    value = float(text)
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number (e.g. 2e6 or 2000000)")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vit-sae train``, shared by the subcommand and ``python -m vit_sae_hooks.train``."""
    defaults = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument("--model", required=True, help="hub id or local folder of the vision transformer")
    data.add_argument("--hook", required=True, help="hook to train on, e.g. blocks.9.hook_resid_post")
    data.add_argument("--images", help="image folder (class subfolders or flat) to take activations from")
    data.add_argument("--tokens", choices=("all", "cls", "patches"), default="all", help="token set (default all)")
    data.add_argument("--cache-activations", metavar="DIR",
                      help="write the activations here once (or reuse a finished cache) and train from disk")
    data.add_argument("--held-out", type=int, default=256, metavar="N",
                      help="last N images of the folder are not trained on and give the final evaluation (default 256)")
    data.add_argument("--image-batch-size", type=int, default=64, help="images per model forward (default 64)")
    data.add_argument("--buffer-images", type=int, default=256,
                      help="images whose tokens are shuffled together into batches (default 256)")
    data.add_argument("--workers", type=int, default=2, help="image decoding processes (default 2)")
    data.add_argument("--data-shards", type=int, help="split the data into this many shards (default: one per process)")
    sae = parser.add_argument_group("SAE")
    sae.add_argument("--arch", choices=sorted(_ARCHITECTURES), default="topk", help="topk (default), relu or jumprelu")
    sae.add_argument("--k", type=int, default=defaults.k, help=f"active latents per token for topk (default {defaults.k})")
    sae.add_argument("--expansion", type=int, default=defaults.expansion_factor,
                     help=f"d_sae = expansion * d_in (default {defaults.expansion_factor})")
    sae.add_argument("--normalize", choices=("none", "scaling_factor"), default=defaults.normalize_activations,
                     help="rescale inputs to an average norm of sqrt(d_in) with a fixed factor (default none)")
    sae.add_argument("--b-dec-init", choices=("geometric_median", "mean", "zeros"), default=defaults.b_dec_init)
    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument("--tokens-budget", type=_count, default=defaults.tokens_budget,
                              help="training tokens over all processes, e.g. 2e6")
    optimisation.add_argument("--batch-size", type=_count, default=defaults.batch_size, help="tokens per step (all processes)")
    optimisation.add_argument("--lr", type=float, help="peak learning rate (default: per architecture)")
    optimisation.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    optimisation.add_argument("--l1-coefficient", type=float, default=defaults.l1_coefficient, help="relu sparsity penalty")
    optimisation.add_argument("--l0-coefficient", type=float, default=defaults.l0_coefficient, help="jumprelu sparsity penalty")
    optimisation.add_argument("--dead-tokens", type=_count, default=defaults.dead_tokens,
                              help="tokens without firing after which a latent counts as dead (default 1e7)")
    optimisation.add_argument("--seed", type=int, default=defaults.seed)
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, help="folder for checkpoints/ and the final SAE (SAELens layout)")
    run.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                     help="continue from the latest checkpoint in --out (or from CHECKPOINT)")
    run.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, help="steps between checkpoints")
    run.add_argument("--wandb", nargs="?", const="vit-sae", metavar="PROJECT", help="log to Weights & Biases")
    run.add_argument("--device", help="torch device (default: cuda if available, under torchrun the local GPU)")
    run.add_argument("--eval-head", help="head for the final evaluation's CE metrics: 'model' or 'zero-shot:FILE'")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def train_command(args: argparse.Namespace) -> int:
    """Run ``vit-sae train``: train, save, then print the held-out evaluation row."""
    from vit_sae_hooks import HookedViT
    from vit_sae_hooks.training.activations import ImageActivations
    from vit_sae_hooks.training.cache import CachedActivations, write_activation_cache
    from vit_sae_hooks.training.trainer import train_sae

    device = distributed.init_from_environment()
    if args.device:
        device = torch.device(args.device)
    rank = distributed.rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(levelname)s %(message)s")
    config = TrainConfig(
        architecture=_ARCHITECTURES[args.arch], k=args.k, expansion_factor=args.expansion,
        normalize_activations=args.normalize, b_dec_init=args.b_dec_init, batch_size=args.batch_size,
        tokens_budget=args.tokens_budget, lr=args.lr, warmup_steps=args.warmup_steps,
        l1_coefficient=args.l1_coefficient, l0_coefficient=args.l0_coefficient, dead_tokens=args.dead_tokens,
        seed=args.seed, data_shards=args.data_shards, checkpoint_every=args.checkpoint_every,
        wandb_project=args.wandb,
    )
    model = HookedViT.from_pretrained(args.model, device=device).eval()
    model.check_hook_name(args.hook)
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
            model, args.hook, train_images, token_set=args.tokens, images_per_block=args.buffer_images,
            batch_size=args.image_batch_size, num_workers=args.workers,
        )
        if cache is not None:
            n_shards = args.data_shards or distributed.world_size()
            own_shards = list(range(rank, n_shards, distributed.world_size()))
            write_activation_cache(data, cache, config.tokens_budget, parts=n_shards, write_parts=own_shards,
                                   seed=config.seed, progress=not args.quiet and rank == 0)
            distributed.barrier()
            data = CachedActivations(cache)
    sae = train_sae(data, config, out=args.out, resume=args.resume, device=device, progress=not args.quiet)
    if rank == 0:
        print(f"saved a {sae.cfg.architecture} SAE ({sae.d_in} -> {sae.d_sae} latents, {args.hook}, {args.tokens} tokens) to {args.out}")
        _print_evaluation(model, sae, held_out, args)
    return 0


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
    wanted = {"hook_name": args.hook, "token_set": args.tokens, "model_name": model.cfg.model_name}
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


def _print_evaluation(model: HookedViT, sae: SAE, held_out: Subset | None, args: argparse.Namespace) -> None:
    from vit_sae_hooks.evals import EvalResult, evaluate

    if held_out is None:
        print("no held-out images (pass --images with --held-out N > 0) for the final evaluation")
        return
    result = evaluate(
        model, sae.to(next(model.parameters()).device), held_out, head=args.eval_head, batch_size=args.image_batch_size,
        num_workers=args.workers, progress=not args.quiet, sae_name=Path(args.out).name,
    )
    print(f"evaluation on {len(held_out)} held-out images:")
    print(EvalResult.markdown_header())
    print(result.markdown_row())


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``vit-sae train``."""
    parser = commands.add_parser(
        "train", help="train an SAE on a hook of a vision transformer",
        description="Train a TopK, ReLU or JumpReLU SAE on one hook; torchrun -m vit_sae_hooks.train scales it out.",
    )
    add_arguments(parser)
    parser.set_defaults(run=train_command)


def main(argv: list[str] | None = None) -> int:
    """``python -m vit_sae_hooks.train ARGS``: the same options as ``vit-sae train``."""
    parser = argparse.ArgumentParser(prog="python -m vit_sae_hooks.train", description="Train an SAE on a hook.")
    add_arguments(parser)
    from vit_sae_hooks.cli import run_reporting_errors

    return run_reporting_errors(parser.prog, train_command, parser.parse_args(argv))
