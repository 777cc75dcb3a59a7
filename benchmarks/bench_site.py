"""Building the feature browser (viz.build_site) against the model forward plus SAE encode over the same images,
measured in one run, and the site's size per 1000 images and per 1000 features.

The baseline is what any tool that reads an SAE's activations must compute: the forward up to the SAE's hook
and the SAE's TopK encode of its tokens (the full forward plus encode is printed too). Both read the same
preprocessed image tensor, so image decoding is in neither. Target: build_site <= 1.3x the baseline.

Each case is timed as wall time and as the process's CPU time. On a machine shared with other jobs, wall
times swing by 50 % or more; with ``--threads 1`` the CPU time counts the work itself, and the ratio is taken
from it (``--ratio-from wall`` on a quiet machine).

    python benchmarks/bench_site.py            # ViT-B/32 shape, TopK SAE d_sae 16384 k 64 at blocks.9, 512 images
    python benchmarks/bench_site.py --quick    # 4 layers, d_sae 4096, 64 images: a smoke run
    python benchmarks/bench_site.py --json benchmarks/results/bench_site_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from vit_sae_hooks import SAE, HookedViT, HookedViTConfig, SAEConfig
from vit_sae_hooks.data import shapes
from vit_sae_hooks.hook_names import stop_layer
from vit_sae_hooks.viz import build_site
from vit_sae_hooks.viz.site.stats import similar_features


def _folder_mib(*folders: Path) -> float:
    return sum(path.stat().st_size for folder in folders for path in folder.rglob("*") if path.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 layers, d_sae 4096, 64 images")
    parser.add_argument("--images", type=int, default=None, help="images (default 512; 64 with --quick)")
    parser.add_argument("--d-sae", type=int, default=None, help="SAE features (default 16384; 4096 with --quick)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; each case's minimum is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--ratio-from", choices=["cpu", "wall"], default="cpu", help="which time the ratio compares")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = 4 if args.quick else 12
    n_images = args.images or (64 if args.quick else 512)
    d_sae = args.d_sae or (4096 if args.quick else 16384)
    hook = f"blocks.{min(9, layers - 1)}.hook_resid_post"
    torch.manual_seed(0)
    model = HookedViT(HookedViTConfig(n_layers=layers, d_model=768, n_heads=12, d_mlp=3072, image_size=224, patch_size=32,
                                      ln_pre=True, act_fn="gelu", head_type="linear", d_output=512)).eval()
    sae = SAE(SAEConfig(d_in=768, d_sae=d_sae, architecture="topk", k=64, hook_name=hook)).eval()
    # Shapes rendered at 224 px: images with flat regions and edges, so thumbnails compress as photos do.
    images = shapes.make_batch(n_images, seed=0, image_size=224).images

    captured: list[torch.Tensor] = []

    def encode(full_forward: bool) -> None:
        for start in range(0, n_images, args.batch):
            captured.clear()
            with torch.no_grad(), model.hooks(fwd_hooks=[(hook, lambda activation, hook: captured.append(activation))]):
                if full_forward:
                    model(images[start : start + args.batch])
                else:
                    model(images[start : start + args.batch], stop_at_layer=stop_layer(hook))
                sae.encode_topk(captured[0])

    scratch = Path(tempfile.mkdtemp(prefix="bench_site_"))

    def site(count: int = n_images) -> None:
        out = scratch / f"site_{time.perf_counter_ns()}"
        build_site(model, sae, images[:count], out, batch_size=args.batch, unnormalize=(shapes.MEAN, shapes.STD),
                   progress=False)
        site.last = out

    cases = {
        "forward to the hook + encode (baseline)": lambda: encode(False),
        "full forward + encode": lambda: encode(True),
        "build_site": site,
    }
    encode(False)  # warm-up: allocator, kernel choice, the native top-k build
    site(args.batch)
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    seconds = {clock: {name: float("inf") for name in cases} for clock in clocks}

    def timed(name: str, run) -> None:
        start = {clock: read() for clock, read in clocks.items()}
        run()
        for clock, read in clocks.items():
            seconds[clock][name] = min(seconds[clock].get(name, float("inf")), read() - start[clock])

    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every case alike
        for name, run in cases.items():
            timed(name, run)
    timed("  of which similar decoder directions", lambda: similar_features(sae.W_dec, 8))

    folder = site.last
    per_image_thumbnails = _folder_mib(folder / "thumbs") / n_images * 1000
    per_image_data = _folder_mib(folder / "data" / "images") / n_images * 1000
    per_image = per_image_thumbnails + per_image_data
    per_feature = (_folder_mib(folder / "data" / "features") + (folder / "data" / "summary.js").stat().st_size / 2**20)
    per_feature = per_feature / d_sae * 1000
    total = _folder_mib(folder)
    shutil.rmtree(scratch)

    basis = seconds[args.ratio_from]
    baseline = basis["forward to the hook + encode (baseline)"]
    ratio = basis["build_site"] / baseline
    print(f"ViT-B/32 shape ({layers} layers), TopK SAE d_sae {d_sae} k 64 at {hook}, {n_images} images of 224 px, "
          f"batch {args.batch}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"min of {args.repeats} interleaved rounds")
    print(f"{'case':<42} {'wall s':>9} {'CPU s':>9} {'x baseline':>11} ({args.ratio_from})")
    for name in seconds["wall"]:
        print(f"{name:<42} {seconds['wall'][name]:>9.2f} {seconds['cpu'][name]:>9.2f} {basis[name] / baseline:>11.3f}")
    print(f"build_site / baseline = {ratio:.3f} ({args.ratio_from} time; target <= 1.3)")
    print(f"site size {total:.1f} MiB: {per_image:.2f} MiB per 1000 images ({per_image_thumbnails:.2f} thumbnails, "
          f"{per_image_data:.2f} image-view data), {per_feature:.2f} MiB per 1000 features (feature views and index)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "layers": layers, "d_sae": d_sae, "images": n_images, "batch": args.batch,
                       "statistic": f"min of {args.repeats}", "seconds": seconds, "ratio_from": args.ratio_from,
                       "ratio_to_baseline": ratio, "site_mib": total, "mib_per_1000_images": per_image,
                       "mib_per_1000_images_thumbnails": per_image_thumbnails,
                       "mib_per_1000_features": per_feature}, handle, indent=2)

if __name__ == "__main__":
    main()
