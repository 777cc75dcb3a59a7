"""TopK SAE forward (and training step) for each kernel backend, as ratios measured in the same run.

Every row is timed against (a) the encode GEMM alone, ``torch.mm(x, W_enc, out=buffer)`` into a
buffer allocated once (the floor: nothing that computes all pre-activations can beat it; the row
``gemm_fresh_output``, ``x @ W_enc``, adds what allocating and first-touching a new
``[N, d_sae]`` output costs, as every peer's encode pays), and (b) the dense reference written the way peers
write it: top-k, scatter into an ``[N, d_sae]`` zero tensor, dense decode GEMM. SAELens's
``TopKSAE`` is timed too when ``sae_lens`` is installed, or, since it needs TransformerLens < 4,
in its own environment via ``--saelens-python`` (``saelens_topk.py``; its row is its ratio to the
floor measured in that process, scaled by this run's floor). A density sweep measures where the
sparse decode of ReLU activations stops beating the dense GEMM.

    python benchmarks/bench_sae.py                  # the issue's shapes (minutes on a laptop CPU)
    python benchmarks/bench_sae.py --quick          # small shapes, seconds
    python benchmarks/bench_sae.py --compile --json benchmarks/results/cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vit_sae_hooks.kernels import (
    decode_dense_or_sparse,
    decode_topk,
    encode_topk,
    native,
)


def device_name(device: torch.device) -> str:
    """The accelerator's or CPU's marketing name, for labelling results."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# How repeats are summarised: "min" (default) because interference from other tenants of a shared
# machine only ever adds time, so the fastest repeat is the least disturbed; "median" on request.
STATISTIC = {"min": min, "median": statistics.median}
_statistic = min


def time_interleaved(candidates: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Seconds per candidate (``--statistic`` of the repeats); rounds interleave candidates so drift hits all alike."""

    def run_once(function: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for function in candidates.values():
        run_once(function)  # warm-up: allocator, compilation, autotuning
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, function in candidates.items():
            samples[name].append(run_once(function))
    return {name: _statistic(times) for name, times in samples.items()}


def make_sae(n: int, d_in: int, d_sae: int, dtype: torch.dtype, device: torch.device, requires_grad: bool):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "x": torch.randn(n, d_in, generator=generator),
        "W_enc": torch.randn(d_in, d_sae, generator=generator) / d_in**0.5,
        "b_enc": 0.1 * torch.randn(d_sae, generator=generator),
        "W_dec": torch.randn(d_sae, d_in, generator=generator) / d_in**0.5,
        "b_dec": torch.randn(d_in, generator=generator),
    }
    return {
        name: t.to(device=device, dtype=dtype).requires_grad_(requires_grad and name != "x") for name, t in tensors.items()
    }


def dense_reference(p: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """TopK SAE forward as peers write it: dense pre-activations, top-k, scatter into zeros, dense decode."""
    pre = p["x"] @ p["W_enc"] + p["b_enc"]
    values, indices = pre.topk(k, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    return acts @ p["W_dec"] + p["b_dec"]


def ours(p: dict[str, torch.Tensor], k: int, backend: str) -> torch.Tensor:
    values, indices = encode_topk(p["x"], p["W_enc"], p["b_enc"], k, backend=backend)
    return decode_topk(values, indices, p["W_dec"], p["b_dec"], backend=backend)


def saelens_forward(p: dict[str, torch.Tensor], k: int) -> Callable[[], object] | str:
    """A SAELens TopKSAE sharing our weights, or why it could not be built."""
    try:
        from sae_lens import TopKSAE, TopKSAEConfig
    except ImportError:
        return "sae_lens not installed"
    try:
        d_in, d_sae = p["W_enc"].shape
        config = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype=str(p["x"].dtype).removeprefix("torch."),
                               device=str(p["x"].device))
        sae = TopKSAE(config)
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(sae, name).copy_(p[name])
    except Exception as error:
        return f"sae_lens present but not comparable: {error}"
    return lambda: sae(p["x"])


def saelens_elsewhere(python: str, n: int, d_in: int, d_sae: int, k: int, repeats: int, statistic: str) -> dict | str:
    """Run saelens_topk.py under another interpreter; its JSON, or why it failed."""
    command = [python, str(Path(__file__).with_name("saelens_topk.py")), "--n", str(n), "--d-in", str(d_in),
               "--d-sae", str(d_sae), "--k", str(k), "--repeats", str(repeats), "--statistic", statistic,
               "--threads", str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"{python} saelens_topk.py failed: {done.stderr.strip().splitlines()[-1:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def backends_for(device: torch.device, dtype: torch.dtype, with_compile: bool) -> list[str]:
    names = ["torch", "chunked"]
    if device.type == "cpu" and dtype == torch.float32 and native.available():
        names.insert(0, "native")
    if with_compile:
        names.append("compile")
    if device.type == "cuda":
        names.append("triton")
    return names


def bench_forward(n, d_in, d_sae, k, dtype, device, repeats, with_compile, saelens_python=None, statistic="min") -> dict:
    p = make_sae(n, d_in, d_sae, dtype, device, requires_grad=False)
    floor_out = torch.empty(n, d_sae, dtype=dtype, device=device)
    candidates: dict[str, Callable[[], object]] = {
        "gemm_floor": lambda: torch.mm(p["x"], p["W_enc"], out=floor_out),
        "gemm_fresh_output": lambda: p["x"] @ p["W_enc"],
        "dense_reference": lambda: dense_reference(p, k),
    }
    notes = {}
    saelens = saelens_forward(p, k)
    if isinstance(saelens, str):
        notes["saelens"] = saelens
    else:
        candidates["saelens_topk"] = saelens
    for backend in backends_for(device, p["x"].dtype, with_compile):
        candidates[f"ours[{backend}]"] = lambda backend=backend: ours(p, k, backend)
    with torch.no_grad():
        times = time_interleaved(candidates, repeats, device)
    if saelens_python and "saelens_topk" not in times:
        elsewhere = saelens_elsewhere(saelens_python, n, p["W_enc"].shape[0], p["W_enc"].shape[1], k, repeats, statistic)
        if isinstance(elsewhere, str):
            notes["saelens"] = elsewhere
        else:
            theirs = elsewhere["seconds"]
            times["saelens_topk (own env)"] = theirs["saelens_topk"] / theirs["gemm_floor"] * times["gemm_floor"]
            notes.pop("saelens", None)
            notes["saelens_env"] = (f"sae_lens {elsewhere['sae_lens']} in {saelens_python}: "
                                    f"{theirs['saelens_topk'] * 1e3:.1f} ms against its own floor "
                                    f"{theirs['gemm_floor'] * 1e3:.1f} ms")
    return {"seconds": times, "notes": notes}


def bench_training(n, d_in, d_sae, k, dtype, device, repeats, with_compile) -> dict:
    p = make_sae(n, d_in, d_sae, dtype, device, requires_grad=True)

    def step(forward: Callable[[], torch.Tensor]) -> Callable[[], object]:
        def run() -> None:
            loss = (forward() - p["x"]).square().sum()
            loss.backward()
            for tensor in p.values():
                tensor.grad = None

        return run

    floor_out = torch.empty(n, d_sae, dtype=dtype, device=device)
    candidates: dict[str, Callable[[], object]] = {
        "gemm_floor": lambda: torch.mm(p["x"], p["W_enc"].detach(), out=floor_out),
        "dense_reference": step(lambda: dense_reference(p, k)),
    }
    for backend in backends_for(device, p["x"].dtype, with_compile):
        candidates[f"ours[{backend}]"] = step(lambda backend=backend: ours(p, k, backend))
    return {"seconds": time_interleaved(candidates, repeats, device), "notes": {}}


def bench_density(n, d_in, d_sae, dtype, device, repeats, densities) -> dict:
    generator = torch.Generator().manual_seed(1)
    W_dec = (torch.randn(d_sae, d_in, generator=generator) / d_in**0.5).to(device=device, dtype=dtype)
    rows = []
    for density in densities:
        acts = torch.rand(n, d_sae, generator=generator) * (torch.rand(n, d_sae, generator=generator) < density)
        acts = acts.to(device=device, dtype=dtype)
        with torch.no_grad():
            times = time_interleaved(
                {
                    "dense": lambda acts=acts: decode_dense_or_sparse(acts, W_dec, None, max_density=-1.0),
                    "sparse": lambda acts=acts: decode_dense_or_sparse(acts, W_dec, None, max_density=1.0),
                },
                repeats,
                device,
            )
        rows.append({"density": density, **times})
    crossover = next((row["density"] for row in rows if row["sparse"] >= row["dense"]), None)
    return {"rows": rows, "first_density_where_dense_wins": crossover}


def format_table(title: str, seconds: dict[str, float]) -> str:
    floor, reference = seconds["gemm_floor"], seconds["dense_reference"]
    lines = [title, f"  {'':22s} {'ms':>10s} {'x GEMM floor':>13s} {'speedup vs dense ref':>21s}"]
    for name, value in seconds.items():
        lines.append(f"  {name:22s} {value * 1e3:10.1f} {value / floor:13.2f} {reference / value:21.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke test)")
    parser.add_argument("--sizes", default="1600,8192", help="comma-separated token counts N")
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=49152)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--statistic", choices=sorted(STATISTIC), default="min",
                        help="summary of the interleaved repeats (min: least disturbed by other tenants)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also time backend='compile' (cold compile ~20 s+)")
    parser.add_argument("--no-training", action="store_true", help="skip the forward+backward tables")
    parser.add_argument("--no-density", action="store_true", help="skip the ReLU dense/sparse decode sweep")
    parser.add_argument("--saelens-python", help="interpreter of an environment with sae_lens (run saelens_topk.py there)")
    parser.add_argument("--json", dest="json_path", help="write all measurements to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.d_in, args.d_sae, args.k, args.repeats = "256", 128, 8192, 32, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    global _statistic  # noqa: PLW0603 - the summary statistic is chosen once per run, on the command line
    _statistic = STATISTIC[args.statistic]
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sizes = [int(size) for size in args.sizes.split(",")]
    report = {
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "statistic": f"{args.statistic} of {args.repeats} interleaved repeats",
        "dtype": args.dtype,
        "d_in": args.d_in,
        "d_sae": args.d_sae,
        "k": args.k,
        "forward": {},
        "training": {},
    }
    print(f"{report['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, "
          f"{report['statistic']}")
    if device.type == "cpu":
        report["native"] = native.status()
        print(f"native kernel: {report['native']}")
    shape = f"d_in {args.d_in}, d_sae {args.d_sae}, k {args.k}"
    for n in sizes:
        result = bench_forward(n, args.d_in, args.d_sae, args.k, dtype, device, args.repeats, args.compile,
                               args.saelens_python, args.statistic)
        report["forward"][n] = result
        print(format_table(f"\nforward, N {n}, {shape}", result["seconds"]))
        for name, note in result["notes"].items():
            print(f"  {name}: {note}")
        if not args.no_training:
            result = bench_training(n, args.d_in, args.d_sae, args.k, dtype, device, args.repeats, args.compile)
            report["training"][n] = result
            print(format_table(f"\nforward+backward, N {n}, {shape} (floor: forward GEMM only)", result["seconds"]))
    if not args.no_density:
        n = sizes[0]
        densities = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
        report["relu_decode"] = bench_density(n, args.d_in, args.d_sae, dtype, device, args.repeats, densities)
        print(f"\nReLU decode, N {n}, d_sae {args.d_sae}: dense GEMM vs sparse embedding_bag (ms)")
        for row in report["relu_decode"]["rows"]:
            print(f"  density {row['density']:6.3f}  dense {row['dense'] * 1e3:9.1f}  sparse {row['sparse'] * 1e3:9.1f}")
        print(f"  first density where dense wins: {report['relu_decode']['first_density_where_dense_wins']}")
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"\nwrote {args.json_path}")


if __name__ == "__main__":
    main()
