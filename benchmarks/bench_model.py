"""HookedViT forward time against transformers' CLIPVisionModel on the same weights, measured in one run.

Prints a table of times and ratios (target: HookedViT <= 1.05x HF with no hooks attached), and the cost of
caching every hook and of forcing the explicit attention path.

    python benchmarks/bench_model.py            # ViT-B/32 shape, batch 32
    python benchmarks/bench_model.py --quick    # smaller, for a smoke run
    python benchmarks/bench_model.py --json benchmarks/results/bench_model_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import transformers

from vit_sae_hooks import HookedViT


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, SDPA kernel choice
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 layers, batch 8")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    layers = 4 if args.quick else 12
    batch = args.batch or (8 if args.quick else 32)
    config = transformers.CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=layers, num_attention_heads=12,
        image_size=224, patch_size=32, hidden_act="gelu",
    )
    torch.manual_seed(0)
    hf_model = transformers.CLIPVisionModel(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        model = HookedViT.from_pretrained(folder, device=args.device, dtype=dtype).eval()
    hf_model = hf_model.to(device=args.device, dtype=dtype)
    images = torch.randn(batch, 3, 224, 224, device=args.device, dtype=dtype)

    def synced(fn):
        def run():
            with torch.inference_mode():
                fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
        return run

    explicit = [(lambda name: name.endswith("hook_pattern"), lambda x, hook: None)]
    cases = {
        "HF CLIPVisionModel": synced(lambda: hf_model(pixel_values=images)),
        "HookedViT": synced(lambda: model(images)),
        "HookedViT, explicit attention": synced(lambda: model.run_with_hooks(images, fwd_hooks=explicit)),
        "HookedViT, run_with_cache (all hooks)": synced(lambda: model.run_with_cache(images)),
    }
    # Interleave the repeats so drift in machine load hits every case alike.
    results = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            results[name].append(_time(fn, 1))
    medians = {name: statistics.median(times) for name, times in results.items()}
    baseline = medians["HF CLIPVisionModel"]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    print(f"ViT-B/32 shape, {layers} layers, batch {batch}, {args.dtype}, {args.device} ({device_name}), "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'case':<40} {'seconds':>9} {'x HF':>7}")
    for name, seconds in medians.items():
        print(f"{name:<40} {seconds:>9.4f} {seconds / baseline:>7.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device_name, "dtype": args.dtype, "batch": batch, "layers": layers,
                       "seconds": medians, "ratio_to_hf": {k: v / baseline for k, v in medians.items()}}, handle, indent=2)


if __name__ == "__main__":
    main()
