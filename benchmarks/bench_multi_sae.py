"""Several SAEs from one pass against the same SAEs trained in separate runs: training tokens per second.

Both train the same n SAEs on the same images with the same settings (``train_saes`` gives bit-identical
SAEs to separate ``train_sae`` runs, tests/training/test_training_families.py). One pass runs the model once
per image for all of them; separate runs each run the model again. The ViT is random with the given shape
(its weights do not change the cost); the images are random 224 px tensors.

    python benchmarks/bench_multi_sae.py --quick              # 4 layers, 3 TopK SAEs (k 16, 32, 64), smoke run
    python benchmarks/bench_multi_sae.py                      # ViT-B/32 shape, 3 SAEs at blocks.9, 96 images
    python benchmarks/bench_multi_sae.py --hooks 3            # one SAE on each of 3 hooks instead
    python benchmarks/bench_multi_sae.py --json benchmarks/results/bench_multi_sae_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import torch

from vit_sae_hooks import HookedViT, HookedViTConfig
from vit_sae_hooks.training import ImageActivations, TrainConfig, train_sae, train_saes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 layers, 48 images")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--hooks", type=int, default=1, help="1: SAEs with k 16, 32, 64 at one hook; n: one SAE per hook")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers, n_images = (4, 48) if args.quick else (12, args.images)
    torch.manual_seed(0)
    model = HookedViT(HookedViTConfig(n_layers=layers, d_model=768, n_heads=12, d_mlp=3072, image_size=224,
                                      patch_size=32, ln_pre=True, act_fn="quick_gelu")).eval()
    images = [torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(i)) for i in range(n_images)]
    tokens = n_images * 50
    base = TrainConfig(architecture="topk", k=32, expansion_factor=args.expansion, batch_size=500,
                       tokens_budget=tokens - tokens % 500, warmup_steps=1, init_tokens=500)
    last = layers - 1
    if args.hooks == 1:
        hooks = [f"blocks.{min(9, last)}.hook_resid_post"]
        configs = [dataclasses.replace(base, k=k, hook_name=hooks[0]) for k in (16, 32, 64)]
    else:
        hooks = [f"blocks.{last - i}.hook_resid_post" for i in range(args.hooks)]
        configs = [dataclasses.replace(base, hook_name=hook) for hook in hooks]

    def data(hook_names):
        return ImageActivations(model, hook_names, images, images_per_block=n_images, batch_size=16, autocast=False)

    # Interleaved rounds; the minimum of each is reported (shared CPUs are noisy).
    together, separate = [], []
    for _ in range(2):
        start = time.perf_counter()
        train_saes(data(hooks), configs, progress=False)
        together.append(time.perf_counter() - start)
        start = time.perf_counter()
        for config in configs:
            train_sae(data([config.hook_name]), config, progress=False)
        separate.append(time.perf_counter() - start)
    trained = base.total_steps * base.batch_size * len(configs)
    rows = {"one pass (train_saes)": min(together), f"{len(configs)} separate runs": min(separate)}
    print(f"{len(configs)} TopK SAEs (d_sae {768 * args.expansion}) on {hooks}, ViT-B/32 shape with {layers} layers, "
          f"{n_images} images, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'case':<28} {'seconds':>9} {'SAE tokens/s':>13} {'x separate':>11}")
    for name, seconds in rows.items():
        print(f"{name:<28} {seconds:>9.2f} {trained / seconds:>13.0f} {min(separate) / seconds:>11.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"hooks": hooks, "n_saes": len(configs), "layers": layers, "images": n_images,
                       "seconds": rows, "sae_tokens": trained,
                       "sae_tokens_per_second": {name: trained / seconds for name, seconds in rows.items()},
                       "threads": torch.get_num_threads()}, handle, indent=1)


if __name__ == "__main__":
    main()
