"""The ``vit-sae`` command line."""

from __future__ import annotations

import argparse
import sys

import torch

from vit_sae_hooks.cli_support import run_reporting_errors
from vit_sae_hooks.demo.cli import register as register_demo
from vit_sae_hooks.evals.cli import register as register_eval
from vit_sae_hooks.evals.cli import register_compare, register_probe
from vit_sae_hooks.training.cli import register as register_train
from vit_sae_hooks.viz.circuit_cli import register as register_circuit
from vit_sae_hooks.viz.site.cli import register as register_browse


def _tiny_random_model():
    from vit_sae_hooks import HookedViT, HookedViTConfig

    torch.manual_seed(0)
    cfg = HookedViTConfig(
        n_layers=4, d_model=64, n_heads=4, d_mlp=256, image_size=32, patch_size=8, ln_pre=True,
        act_fn="quick_gelu", head_type="linear", d_output=32, model_name="tiny-random-clip-style",
    )
    return HookedViT(cfg).eval()


def inspect_model(args: argparse.Namespace) -> int:
    """Print a model's configuration and every hook with the shape it has on a random batch."""
    from vit_sae_hooks import HookedViT

    model = HookedViT.from_pretrained(args.model) if args.model else _tiny_random_model()
    cfg = model.cfg
    images = torch.randn(cfg.input_shape(args.batch))
    with torch.no_grad():
        output, cache = model.run_with_cache(images)
    print(f"model: {cfg.model_name} ({cfg.original_architecture})")
    print(
        f"  {cfg.n_layers} blocks, d_model {cfg.d_model}, {cfg.n_heads} heads x {cfg.d_head}, d_mlp {cfg.d_mlp}, "
        f"act {cfg.act_fn}, image {cfg.image_size[0]}x{cfg.image_size[1]}, patch {cfg.patch_size[0]}, "
        f"{cfg.n_ctx} tokens ({cfg.n_prefix_tokens} prefix + {cfg.n_patches} patches), pool {cfg.pool_type}"
    )
    print(f"output: {tuple(output.shape)}; {len(cache)} hooks cached on a random batch of {args.batch}:")
    width = max(len(name) for name in cache.keys())
    for name in cache.keys():
        if args.all or not name.startswith("blocks.") or name.startswith(("blocks.0.", f"blocks.{cfg.n_layers - 1}.")):
            tensor = cache[name]
            print(f"  {name:<{width}}  {list(tensor.shape)!s:<20} mean {tensor.mean():+.3f}  std {tensor.std():.3f}")
    if not args.all and cfg.n_layers > 2:
        print(f"  (blocks 1-{cfg.n_layers - 2} have the same hooks; --all lists every block)")
    return 0


def register_inspect(commands: argparse._SubParsersAction) -> None:
    """Add ``vit-sae inspect``."""
    inspect = commands.add_parser("inspect", help="list a model's hooks with their shapes")
    inspect.add_argument("model", nargs="?", help="hub id or local folder (default: a tiny random model, offline)")
    inspect.add_argument("--batch", type=int, default=2)
    inspect.add_argument("--all", action="store_true", help="list the hooks of every block")
    inspect.set_defaults(run=inspect_model)


# Each feature registers its own subcommand: a function taking the subparsers and setting ``run``.
SUBCOMMANDS = [register_demo, register_inspect, register_eval, register_compare, register_probe, register_train,
               register_browse, register_circuit]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vit-sae``."""
    parser = argparse.ArgumentParser(prog="vit-sae", description="Hooked vision transformers and sparse autoencoders.")
    commands = parser.add_subparsers(dest="command", required=True)
    for register in SUBCOMMANDS:
        register(commands)
    args = parser.parse_args(argv)
    return run_reporting_errors(f"vit-sae {args.command}", args.run, args)


if __name__ == "__main__":
    sys.exit(main())
