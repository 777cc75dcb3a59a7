"""``vit-sae demo``: run the offline demo and print its story."""

from __future__ import annotations

import argparse
import time


def run(args: argparse.Namespace) -> int:
    """Run the demo, print each step, and write the figures and the feature browser."""
    from vit_sae_hooks.demo.run import run_demo

    start = time.perf_counter()
    report = run_demo(out=None if args.no_figures else args.out, n_images=args.images, figures=not args.no_figures)
    print("\n".join(report.lines))
    print(f"\n(done in {time.perf_counter() - start:.1f} s)")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``vit-sae demo``."""
    demo = commands.add_parser("demo", help="offline demo on the shipped shapes ViT and SAE")
    demo.add_argument("--out", default="vit-sae-demo",
                      help="folder for the figures and the feature browser (default: ./vit-sae-demo)")
    demo.add_argument("--images", type=int, default=1000, help="held-out images to use")
    demo.add_argument("--no-figures", action="store_true", help="write no figures and no feature browser")
    demo.set_defaults(run=run)
