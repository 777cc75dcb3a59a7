"""HookedViT forward time against transformers' CLIPVisionModel on the same weights, measured in one run.

Prints a table of times and ratios (target: HookedViT <= 1.05x HF with no hooks attached), the cost of
caching every hook and of forcing the explicit attention path, and the cost of one TopK SAE spliced at
blocks.9.hook_resid_post against its encode GEMM alone, written into a preallocated buffer (target:
spliced <= bare + 1.15x the GEMM). With
``--memory`` it also measures, each in a fresh process, the peak memory growth of the bare and the spliced
forward, next to the size a dense ``[tokens, d_sae]`` activation tensor would take; on CUDA every case's
peak allocation is reported anyway. Both models use PyTorch's scaled-dot-product attention (SDPA).

    python benchmarks/bench_model.py            # ViT-B/32 shape, batch 32
    python benchmarks/bench_model.py --quick    # smaller, for a smoke run
    python benchmarks/bench_model.py --json benchmarks/results/bench_model_cpu.json
    python benchmarks/bench_model.py --device cuda --dtype bfloat16 --batch 256   # as benchmarks/gpu/run.sh does
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import transformers

from vit_sae_hooks import SAE, HookedViT, SAEConfig

SAE_HOOK = "blocks.9.hook_resid_post"


def _sae(d_sae: int, layers: int) -> SAE:
    hook = SAE_HOOK if layers > 9 else f"blocks.{layers - 1}.hook_resid_post"
    return SAE(SAEConfig(d_in=768, d_sae=d_sae, architecture="topk", k=64, hook_name=hook)).eval()


def _peak_memory_growth(case: str, layers: int, batch: int, d_sae: int) -> float:
    """MiB of peak resident-memory growth of one forward (run in this fresh process; Linux only)."""
    config = transformers.CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=layers,
                                           num_attention_heads=12, image_size=224, patch_size=32)
    with tempfile.TemporaryDirectory() as folder:
        transformers.CLIPVisionModel(config).save_pretrained(folder)
        model = HookedViT.from_pretrained(folder).eval()
    sae = _sae(d_sae, layers)
    images = torch.randn(batch, 3, 224, 224)
    # Loading set a high-water mark above what a forward needs; reset it so the peak is the forward's own.
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _status_kib("VmRSS")
    with torch.inference_mode():
        if case == "spliced":
            model.run_with_saes(images, saes=[sae])
        else:
            model(images)
    return (_status_kib("VmHWM") - before) / 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))


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
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--statistic", choices=["min", "median"], default="min",
                        help="summary of the interleaved repeats (min: least disturbed by other tenants)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--d-sae", type=int, default=49152)
    parser.add_argument("--memory", action="store_true", help="also measure peak memory, bare vs spliced")
    parser.add_argument("--memory-case", choices=["bare", "spliced"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.memory_case:
        layers = 4 if args.quick else 12
        print(_peak_memory_growth(args.memory_case, layers, args.batch or (8 if args.quick else 32), args.d_sae))
        return
    dtype = getattr(torch, args.dtype)
    layers = 4 if args.quick else 12
    batch = args.batch or (8 if args.quick else 32)
    config = transformers.CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=layers, num_attention_heads=12,
        image_size=224, patch_size=32, hidden_act="gelu", attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    hf_model = transformers.CLIPVisionModel(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        model = HookedViT.from_pretrained(folder, device=args.device, dtype=dtype).eval()
    hf_model = hf_model.to(device=args.device, dtype=dtype)
    images = torch.randn(batch, 3, 224, 224, device=args.device, dtype=dtype)
    sae = _sae(args.d_sae, layers).to(device=args.device, dtype=dtype)
    # The SAE's own forward inside the spliced model, timed by module hooks: the splice cost without
    # the noise of subtracting two whole-model timings.
    # On CUDA the hooks record events (the host runs ahead of the GPU), read once the repeats are done.
    sae_inside: list = []
    if args.device.startswith("cuda"):
        def mark() -> torch.cuda.Event:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event

        sae.register_forward_pre_hook(lambda module, inputs: sae_inside.append(mark()))
        sae.register_forward_hook(lambda module, inputs, output: sae_inside.append((sae_inside.pop(), mark())))
    else:
        sae.register_forward_pre_hook(lambda module, inputs: sae_inside.append(-time.perf_counter()))
        sae.register_forward_hook(lambda module, inputs, output: sae_inside.append(sae_inside.pop() + time.perf_counter()))
    tokens = torch.randn(batch * model.cfg.n_ctx, 768, device=args.device, dtype=dtype)
    floor_out = torch.empty(tokens.shape[0], args.d_sae, device=args.device, dtype=dtype)  # allocated once

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
        "HookedViT + TopK SAE spliced": synced(lambda: model.run_with_saes(images, saes=[sae])),
        "encode GEMM alone (floor)": synced(lambda: torch.mm(tokens, sae.W_enc, out=floor_out)),
    }
    peak_mib = {}
    if args.device.startswith("cuda"):
        # One call each, alone, for the peak memory it allocates beyond what is already held.
        for name, fn in cases.items():
            torch.cuda.reset_peak_memory_stats()
            held = torch.cuda.memory_allocated()
            fn()
            peak_mib[name] = (torch.cuda.max_memory_allocated() - held) / 2**20
    # Interleave the repeats so drift in machine load hits every case alike.
    results = {name: [] for name in cases}
    sae_inside.clear()  # drop the warm-up calls
    for _ in range(args.repeats):
        for name, fn in cases.items():
            results[name].append(_time(fn, 1))
    summarise = min if args.statistic == "min" else statistics.median
    seconds_by_case = {name: summarise(times) for name, times in results.items()}
    baseline = seconds_by_case["HF CLIPVisionModel"]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    print(f"ViT-B/32 shape, {layers} layers, batch {batch}, {args.dtype}, {args.device} ({device_name}), "
          f"{torch.get_num_threads()} threads, {args.statistic} of {args.repeats} interleaved repeats; "
          f"HF attention: {hf_model.config._attn_implementation}")
    print(f"{'case':<40} {'seconds':>9} {'x HF':>7}" + (f" {'peak MiB':>9}" if peak_mib else ""))
    for name, seconds in seconds_by_case.items():
        peak = f" {peak_mib[name]:>9.0f}" if name in peak_mib else ""
        print(f"{name:<40} {seconds:>9.4f} {seconds / baseline:>7.3f}{peak}")
    spliced, plain = seconds_by_case["HookedViT + TopK SAE spliced"], seconds_by_case["HookedViT"]
    splice_cost = (spliced - plain) / seconds_by_case["encode GEMM alone (floor)"]
    if args.device.startswith("cuda"):
        sae_inside = [start.elapsed_time(stop) / 1e3 for start, stop in sae_inside]
    sae_cost = summarise(sae_inside) / seconds_by_case["encode GEMM alone (floor)"]
    print(f"SAE forward inside the spliced model: {sae_cost:.3f}x the encode GEMM (timed by module hooks)")
    print(f"SAE splice cost: {splice_cost:.3f}x the encode GEMM (target <= 1.15; d_sae {args.d_sae}, k 64, "
          f"{batch * model.cfg.n_ctx} tokens)")
    results = {"device": device_name, "device_type": torch.device(args.device).type,
               "statistic": f"{args.statistic} of {args.repeats}", "dtype": args.dtype,
               "batch": batch, "layers": layers, "d_sae": args.d_sae,
               "seconds": seconds_by_case, "ratio_to_hf": {k: v / baseline for k, v in seconds_by_case.items()},
               "splice_cost_in_encode_gemms": splice_cost, "sae_forward_in_model_in_encode_gemms": sae_cost,
               "hf_attention": hf_model.config._attn_implementation, "peak_mib": peak_mib}
    if args.memory:
        growth = {}
        for case in ("bare", "spliced"):
            command = [sys.executable, __file__, "--memory-case", case, "--d-sae", str(args.d_sae), "--batch", str(batch)]
            command += ["--quick"] if args.quick else []
            growth[case] = float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1])
        dense = batch * model.cfg.n_ctx * args.d_sae * 4 / 2**20
        print(f"peak memory growth of one forward: bare {growth['bare']:.0f} MiB, spliced {growth['spliced']:.0f} MiB "
              f"(+{growth['spliced'] - growth['bare']:.0f} MiB; one dense [tokens, d_sae] float32 tensor is {dense:.0f} MiB)")
        results["peak_memory_growth_mib"] = growth
        results["dense_activation_tensor_mib"] = dense
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
