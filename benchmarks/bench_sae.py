"""TopK SAE forward (and training step) for each kernel backend, as ratios measured in the same run.

Every row is timed against (a) the encode GEMM alone, ``torch.mm(x, W_enc, out=buffer)`` into a
buffer allocated once (the floor: nothing that computes all pre-activations can beat it; the row
``gemm_fresh_output``, ``x @ W_enc``, adds what allocating and first-touching a new
``[N, d_sae]`` output costs, as every peer's encode pays), and (b) the dense reference written the way peers
write it: top-k, scatter into an ``[N, d_sae]`` zero tensor, dense decode GEMM. ``saelens_style`` is the
arithmetic of SAELens 6's ``TopKSAE`` (sorted top-k, ReLU, in-place scatter into zeros, dense decode);
SAELens itself is timed when ``sae_lens`` is installed, or, since it needs TransformerLens < 4, in its own
environment via ``--saelens-python`` (``saelens_topk.py``; its row is its ratio to the floor measured in
that process, scaled by this run's floor). ``--sparsify`` adds EleutherAI sparsify's fused encoder and
Triton decode (CUDA). On CUDA every row also reports the peak memory its call allocates. A row that
cannot run (out of memory, a peer that fails) is reported with the reason instead of stopping the run.
A density sweep measures where the sparse decode of ReLU activations stops beating the dense GEMM.

    python benchmarks/bench_sae.py                  # the issue's shapes (minutes on a laptop CPU)
    python benchmarks/bench_sae.py --quick          # small shapes, seconds
    python benchmarks/bench_sae.py --compile --json benchmarks/results/cpu.json
    python benchmarks/bench_sae.py --device cuda --dtype bfloat16 --shapes 768x49152x64,1024x65536x32 \\
        --sizes 16384,4096,65536 --compile --sparsify --json out.json    # as benchmarks/gpu/run.sh does
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from vit_sae_hooks.kernels import (
    decode_dense_or_sparse,
    decode_topk,
    encode_topk,
    native,
    resolved_backend,
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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    candidates: dict[str, Callable[[], object]], repeats: int, device: torch.device, seconds_per_row: float = float("inf"),
) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """Seconds per candidate (``--statistic`` of the repeats), peak MiB per call (CUDA), and why rows failed.

    Rounds interleave the candidates so drift hits all alike. A candidate stops repeating once its
    repeats have taken ``seconds_per_row`` (it keeps at least two). The warm-up call (allocator,
    compilation, autotuning) also measures the peak memory the call allocates beyond what was held before.
    A candidate that raises, out of memory included, is dropped with the error as its reason.
    """

    def run_once(function: Callable[[], object]) -> float:
        _synchronize(device)
        start = time.perf_counter()
        function()
        _synchronize(device)
        return time.perf_counter() - start

    peaks: dict[str, float] = {}
    failures: dict[str, str] = {}
    for name, function in list(candidates.items()):
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                held = torch.cuda.memory_allocated(device)
            run_once(function)
            if device.type == "cuda":
                peaks[name] = (torch.cuda.max_memory_allocated(device) - held) / 2**20
        except Exception as error:
            failures[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
            del candidates[name]
            if device.type == "cuda":
                torch.cuda.empty_cache()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, function in candidates.items():
            if len(samples[name]) < 2 or sum(samples[name]) < seconds_per_row:
                samples[name].append(run_once(function))
    return {name: _statistic(times) for name, times in samples.items()}, peaks, failures


def make_sae(n: int, d_in: int, d_sae: int, dtype: torch.dtype, device: torch.device, requires_grad: bool):
    """Seeded ``x`` and SAE weights, drawn in float32 on the CPU (the same values on every device), then moved."""
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


def saelens_style(p: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """The arithmetic of SAELens 6's ``TopKSAE`` forward: GEMM then bias, sorted top-k, ReLU, in-place
    scatter into a zero tensor, dense decode GEMM then bias."""
    hidden_pre = p["x"] @ p["W_enc"] + p["b_enc"]
    top = torch.topk(hidden_pre, k=k, dim=-1)
    feature_acts = torch.zeros_like(hidden_pre)
    feature_acts.scatter_(-1, top.indices, top.values.relu())
    return feature_acts @ p["W_dec"] + p["b_dec"]


def ours(p: dict[str, torch.Tensor], k: int, backend: str) -> torch.Tensor:
    values, indices = encode_topk(p["x"], p["W_enc"], p["b_enc"], k, backend=backend)
    return decode_topk(values, indices, p["W_dec"], p["b_dec"], backend=backend)


def triton_encode_only(p: dict[str, torch.Tensor], k: int, block_n: int, num_warps: int) -> Callable[[], object]:
    """The Triton encoder alone with one tile height and warp count (``--triton-configs``)."""
    from vit_sae_hooks.kernels import triton_encode

    return lambda: triton_encode.encode_forward(p["x"], p["W_enc"], p["b_enc"], k, block_n=block_n,
                                                num_warps=num_warps)


def load_sparsify() -> types.SimpleNamespace | str:
    """EleutherAI sparsify's fused encoder and Triton decode, or why they cannot be loaded.

    Imports the installed package; if its package imports fail (it pulls in its trainer's
    dependencies), loads the two modules that the SAE forward uses, which need only torch and triton.
    """
    try:
        from sparsify.fused_encoder import fused_encoder
        from sparsify.xformers import xformers_embedding_bag
    except ImportError as package_error:
        spec = importlib.util.find_spec("sparsify")
        if spec is None or not spec.submodule_search_locations:
            return "sparsify is not installed (benchmarks/gpu/fetch_wheels.sh carries eai-sparsify)"
        folder = Path(next(iter(spec.submodule_search_locations)))
        modules = {}
        try:
            for name in ("fused_encoder", "xformers"):
                module_spec = importlib.util.spec_from_file_location(f"_sparsify_{name}", folder / f"{name}.py")
                modules[name] = importlib.util.module_from_spec(module_spec)
                module_spec.loader.exec_module(modules[name])
        except Exception as error:
            return f"sparsify does not import ({package_error}); loading its kernels alone failed too: {error}"
        fused_encoder = modules["fused_encoder"].fused_encoder
        xformers_embedding_bag = modules["xformers"].xformers_embedding_bag
    try:
        version = importlib.metadata.version("eai-sparsify")
    except importlib.metadata.PackageNotFoundError:
        version = "(version unknown)"
    return types.SimpleNamespace(fused_encoder=fused_encoder, decode=xformers_embedding_bag, version=version)


def sparsify_forward(sparsify: types.SimpleNamespace, p: dict[str, torch.Tensor], k: int,
                     encoder_weight: torch.Tensor) -> torch.Tensor:
    """sparsify's SAE forward on our weights: ``fused_encoder`` (linear, ReLU, top-k; its own sparse
    backward) with its ``[d_sae, d_in]`` encoder layout, then its Triton embedding-bag decode, plus ``b_dec``."""
    values, indices, _ = sparsify.fused_encoder(p["x"], encoder_weight, p["b_enc"], k, "topk")
    return sparsify.decode(indices, p["W_dec"], values.to(p["W_dec"].dtype)) + p["b_dec"]


def peer_rows(p: dict[str, torch.Tensor], k: int, sparsify: types.SimpleNamespace | str | None,
              notes: dict[str, str]) -> dict[str, Callable[[], torch.Tensor]]:
    """The forward functions of the peers' formulations (dense reference, SAELens-style, sparsify)."""
    rows: dict[str, Callable[[], torch.Tensor]] = {
        "dense_reference": lambda: dense_reference(p, k),
        "saelens_style": lambda: saelens_style(p, k),
    }
    if isinstance(sparsify, str):
        notes["sparsify"] = sparsify
    elif sparsify is not None:
        if p["x"].device.type != "cuda":
            notes["sparsify"] = "sparsify's decode is a Triton kernel: CUDA only"
        else:
            # sparsify keeps the encoder as nn.Linear's [d_sae, d_in] weight: made once, outside the timing.
            encoder_weight = p["W_enc"].detach().t().contiguous().requires_grad_(p["W_enc"].requires_grad)
            p["sparsify_W_enc_T"] = encoder_weight  # in p, so that a training step clears its gradient too
            rows[f"sparsify {sparsify.version}"] = lambda: sparsify_forward(sparsify, p, k, encoder_weight)
    return rows


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
    """Our rows: every backend that runs on ``device`` (``chunked`` is a CPU memory bound: ``auto`` never
    picks it on CUDA)."""
    names = ["torch"] if device.type == "cuda" else ["torch", "chunked"]
    if device.type == "cpu" and dtype == torch.float32 and native.available():
        names.insert(0, "native")
    if with_compile:
        names.append("compile")
    if device.type == "cuda":
        names.append("triton")
    return names


def bench_forward(n, d_in, d_sae, k, dtype, device, args, with_compile: bool, sparsify) -> dict:
    p = make_sae(n, d_in, d_sae, dtype, device, requires_grad=False)
    floor_out = torch.empty(n, d_sae, dtype=dtype, device=device)
    notes: dict[str, str] = {}
    candidates: dict[str, Callable[[], object]] = {
        "gemm_floor": lambda: torch.mm(p["x"], p["W_enc"], out=floor_out),
        "gemm_fresh_output": lambda: p["x"] @ p["W_enc"],
        **peer_rows(p, k, sparsify, notes),
    }
    saelens = saelens_forward(p, k)
    if isinstance(saelens, str):
        notes["saelens"] = saelens
    else:
        candidates["saelens_topk"] = saelens
    for backend in backends_for(device, p["x"].dtype, with_compile):
        candidates[f"ours[{backend}]"] = lambda backend=backend: ours(p, k, backend)
    if args.triton_configs and device.type == "cuda" and n == args.sizes[0]:
        for block_n, num_warps in args.triton_configs:
            candidates[f"triton encode only, {block_n} rows, {num_warps} warps"] = triton_encode_only(
                p, k, block_n, num_warps)
    with torch.no_grad():
        times, peaks, failures = time_interleaved(candidates, args.repeats, device, args.seconds_per_row)
    if args.saelens_python and "saelens_topk" not in times:
        elsewhere = saelens_elsewhere(args.saelens_python, n, d_in, d_sae, k, args.repeats, args.statistic)
        if isinstance(elsewhere, str):
            notes["saelens"] = elsewhere
        else:
            theirs = elsewhere["seconds"]
            times["saelens_topk (own env)"] = theirs["saelens_topk"] / theirs["gemm_floor"] * times["gemm_floor"]
            notes.pop("saelens", None)
            notes["saelens_env"] = (f"sae_lens {elsewhere['sae_lens']} in {args.saelens_python}: "
                                    f"{theirs['saelens_topk'] * 1e3:.1f} ms against its own floor "
                                    f"{theirs['gemm_floor'] * 1e3:.1f} ms")
    return {"seconds": times, "peak_mib": peaks, "failed": failures, "notes": notes,
            "auto_backend": resolved_backend(p["x"], d_sae)}


def bench_training(n, d_in, d_sae, k, dtype, device, args, with_compile: bool, sparsify) -> dict:
    p = make_sae(n, d_in, d_sae, dtype, device, requires_grad=True)
    notes: dict[str, str] = {}

    def step(forward: Callable[[], torch.Tensor]) -> Callable[[], object]:
        def run() -> None:
            loss = (forward() - p["x"]).float().square().sum()
            loss.backward()
            for tensor in p.values():
                tensor.grad = None

        return run

    floor_out = torch.empty(n, d_sae, dtype=dtype, device=device)
    candidates: dict[str, Callable[[], object]] = {
        "gemm_floor": lambda: torch.mm(p["x"], p["W_enc"].detach(), out=floor_out),
        **{name: step(forward) for name, forward in peer_rows(p, k, sparsify, notes).items()},
    }
    for backend in backends_for(device, p["x"].dtype, with_compile):
        candidates[f"ours[{backend}]"] = step(lambda backend=backend: ours(p, k, backend))
    times, peaks, failures = time_interleaved(candidates, args.repeats, device, args.seconds_per_row)
    return {"seconds": times, "peak_mib": peaks, "failed": failures, "notes": notes}


def bench_density(n, d_in, d_sae, dtype, device, repeats, densities) -> dict:
    generator = torch.Generator().manual_seed(1)
    W_dec = (torch.randn(d_sae, d_in, generator=generator) / d_in**0.5).to(device=device, dtype=dtype)
    rows = []
    for density in densities:
        acts = torch.rand(n, d_sae, generator=generator) * (torch.rand(n, d_sae, generator=generator) < density)
        acts = acts.to(device=device, dtype=dtype)
        with torch.no_grad():
            times, _, _ = time_interleaved(
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


def format_table(title: str, result: dict) -> str:
    """One table: ms, ratio to the floor, speed-up over the dense reference, peak MiB; then failures and notes."""
    seconds, peaks = result["seconds"], result["peak_mib"]
    floor, reference = seconds.get("gemm_floor"), seconds.get("dense_reference")
    header = f"  {'':44s} {'ms':>10s} {'x GEMM floor':>13s} {'speedup vs dense ref':>21s}"
    lines = [title, header + (f" {'peak MiB':>9s}" if peaks else "")]
    if "auto_backend" in result:
        lines[0] += f" (backend='auto' runs {result['auto_backend']!r})"
    for name, value in seconds.items():
        ratio = f"{value / floor:13.2f}" if floor else f"{'n/a':>13s}"
        speedup = f"{reference / value:21.2f}" if reference else f"{'n/a':>21s}"
        peak = f" {peaks[name]:9.0f}" if name in peaks else ""
        lines.append(f"  {name:44s} {value * 1e3:10.2f} {ratio} {speedup}{peak}")
    for name, reason in result["failed"].items():
        lines.append(f"  {name:44s} could not run: {reason}")
    for name, note in result["notes"].items():
        lines.append(f"  {name}: {note}")
    return "\n".join(lines)


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """``"768x49152x64,1024x65536x32"`` -> ``[(768, 49152, 64), (1024, 65536, 32)]`` (d_in x d_sae x k)."""
    shapes = []
    for item in text.split(","):
        parts = item.strip().split("x")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"shape {item!r} is not d_in x d_sae x k, e.g. 768x49152x64")
        shapes.append(tuple(int(part) for part in parts))
    return shapes


def parse_triton_configs(text: str) -> list[tuple[int, int]]:
    """``"64:8,32:8"`` -> ``[(64, 8), (32, 8)]`` (tile rows : warps)."""
    return [tuple(int(part) for part in item.split(":")) for item in text.split(",") if item.strip()]


def write_report(report: dict, json_path: str | None) -> None:
    """Rewrite the JSON after every table, so a run stopped early keeps what it measured."""
    if json_path:
        temporary = f"{json_path}.tmp"
        with open(temporary, "w") as handle:
            json.dump(report, handle, indent=2)
        os.replace(temporary, json_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke test)")
    parser.add_argument("--sizes", default="1600,8192", help="comma-separated token counts N, run in this order")
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=49152)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--shapes", type=parse_shapes,
                        help="comma-separated d_in x d_sae x k, e.g. 768x49152x64,1024x65536x32 (overrides the three above)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds-per-row", type=float, default=float("inf"),
                        help="stop repeating a row once its repeats took this long (at least two are kept)")
    parser.add_argument("--statistic", choices=sorted(STATISTIC), default="min",
                        help="summary of the interleaved repeats (min: least disturbed by other tenants)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also time backend='compile' (cold compile ~20 s+)")
    parser.add_argument("--compile-sizes", help="comma-separated N at which to time 'compile' (default: every N)")
    parser.add_argument("--sparsify", action="store_true", help="also time EleutherAI sparsify (CUDA)")
    parser.add_argument("--triton-configs", type=parse_triton_configs, default=[],
                        help="rows:warps pairs, e.g. 64:8,64:4,32:8: Triton encode-only rows at the first N")
    parser.add_argument("--no-training", action="store_true", help="skip the forward+backward tables")
    parser.add_argument("--no-density", action="store_true", help="skip the ReLU dense/sparse decode sweep")
    parser.add_argument("--time-budget", type=float, default=float("inf"),
                        help="seconds after which no new (shape, N) is started; the skipped ones are listed")
    parser.add_argument("--saelens-python", help="interpreter of an environment with sae_lens (run saelens_topk.py there)")
    parser.add_argument("--json", dest="json_path", help="write all measurements to this JSON file (after every table)")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.d_in, args.d_sae, args.k, args.repeats = "256", 128, 8192, 32, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    global _statistic  # noqa: PLW0603 - the summary statistic is chosen once per run, on the command line
    _statistic = STATISTIC[args.statistic]
    started = time.perf_counter()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    args.sizes = [int(size) for size in str(args.sizes).split(",")]
    shapes = args.shapes or [(args.d_in, args.d_sae, args.k)]
    compile_sizes = set(args.sizes if args.compile_sizes is None else map(int, args.compile_sizes.split(",")))
    sparsify = load_sparsify() if args.sparsify else None
    report = {
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "statistic": f"{args.statistic} of up to {args.repeats} interleaved repeats",
        "dtype": args.dtype,
        "shapes": [f"{d_in}x{d_sae}x{k}" for d_in, d_sae, k in shapes],
        "forward": {},
        "training": {},
        "skipped": [],
    }
    print(f"{report['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, "
          f"{report['statistic']}", flush=True)
    if device.type == "cpu":
        report["native"] = native.status()
        print(f"native kernel: {report['native']}")
    if isinstance(sparsify, types.SimpleNamespace):
        print(f"sparsify {sparsify.version}: fused encoder + Triton decode")
    # Every shape at the first N before any shape at the next: a run cut short by --time-budget keeps the
    # sizes listed first complete.
    for n in args.sizes:
        for d_in, d_sae, k in shapes:
            key = f"{d_in}x{d_sae}x{k}"
            report["forward"].setdefault(key, {})
            report["training"].setdefault(key, {})
            shape = f"d_in {d_in}, d_sae {d_sae}, k {k}"
            if time.perf_counter() - started > args.time_budget:
                report["skipped"].append(f"{key} N {n}: time budget of {args.time_budget:.0f} s spent")
                print(f"\nskipped {shape}, N {n}: the time budget of {args.time_budget:.0f} s is spent", flush=True)
                continue
            with_compile = args.compile and n in compile_sizes
            result = bench_forward(n, d_in, d_sae, k, dtype, device, args, with_compile, sparsify)
            report["forward"][key][n] = result
            print(format_table(f"\nforward, N {n}, {shape}, {args.dtype}", result), flush=True)
            write_report(report, args.json_path)
            if not args.no_training:
                result = bench_training(n, d_in, d_sae, k, dtype, device, args, with_compile, sparsify)
                report["training"][key][n] = result
                print(format_table(f"\nforward+backward, N {n}, {shape}, {args.dtype} (floor: forward GEMM only)",
                                   result), flush=True)
                write_report(report, args.json_path)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if not args.no_density:
        n, (d_in, d_sae, _) = args.sizes[0], shapes[0]
        densities = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
        report["relu_decode"] = bench_density(n, d_in, d_sae, dtype, device, args.repeats, densities)
        print(f"\nReLU decode, N {n}, d_sae {d_sae}: dense GEMM vs sparse embedding_bag (ms)")
        for row in report["relu_decode"]["rows"]:
            print(f"  density {row['density']:6.3f}  dense {row['dense'] * 1e3:9.1f}  sparse {row['sparse'] * 1e3:9.1f}")
        print(f"  first density where dense wins: {report['relu_decode']['first_density_where_dense_wins']}")
    write_report(report, args.json_path)
    if args.json_path:
        print(f"\nwrote {args.json_path}")


if __name__ == "__main__":
    sys.exit(main())
