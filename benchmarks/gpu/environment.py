"""What the GPU run ran on: interpreter, packages and where they were imported from, the device and,
on CUDA, its two ceilings measured here (a bfloat16 and a float32 GEMM, a device-to-device copy).

    python benchmarks/gpu/environment.py --json OUT/environment.json
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import sys

import torch

PACKAGES = ["torch", "triton", "transformers", "transformer-lens", "datasets", "eai-sparsify", "timm", "numpy",
            "huggingface-hub", "safetensors", "jaxtyping", "einops", "pytest", "hypothesis", "vit_sae_hooks"]
MODULES = ["vit_sae_hooks", "transformer_lens", "sparsify", "triton"]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _origin(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__file__", None) or "namespace"
    except Exception as error:
        return f"import fails: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _seconds_per_call(function, repeats: int = 10) -> float:
    """Mean seconds of ``function`` on the GPU after three warm-ups, by CUDA events."""
    for _ in range(3):
        function()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        function()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / 1e3 / repeats


def ceilings() -> dict[str, float]:
    """Dense GEMM rates (TFLOP/s, random data) and copy bandwidth (GB/s, bytes read + written)."""
    size = 8192
    measured = {}
    for dtype in (torch.bfloat16, torch.float32):
        a, b = (torch.randn(size, size, device="cuda", dtype=dtype) for _ in range(2))
        out = torch.empty(size, size, device="cuda", dtype=dtype)
        seconds = _seconds_per_call(lambda a=a, b=b, out=out: torch.mm(a, b, out=out))
        measured[f"gemm_{str(dtype).removeprefix('torch.')}_tflops"] = 2 * size**3 / seconds / 1e12
    source = torch.empty(2**30, device="cuda", dtype=torch.uint8).random_()
    target = torch.empty_like(source)
    seconds = _seconds_per_call(lambda: target.copy_(source))
    measured["copy_gb_per_s"] = 2 * source.numel() / seconds / 1e9
    return measured


def toolchain() -> dict[str, str]:
    """What Triton needs on the host to launch any kernel (ours, sparsify's, inductor's): a C compiler and
    Python's headers to build its launcher, and a Triton kernel that runs (on CUDA only)."""
    import shutil
    import sysconfig
    from pathlib import Path

    found = {
        "c_compiler": shutil.which("cc") or shutil.which("gcc") or shutil.which("clang") or "none on PATH",
        "python_h": str(Path(sysconfig.get_paths()["include"]) / "Python.h"),
    }
    if not Path(found["python_h"]).exists():
        found["python_h"] += " (missing)"
    if torch.cuda.is_available():
        try:
            import triton
            import triton.language as tl

            @triton.jit
            def add_one(pointer, n, BLOCK: tl.constexpr):
                offsets = tl.arange(0, BLOCK)
                mask = offsets < n
                tl.store(pointer + offsets, tl.load(pointer + offsets, mask=mask) + 1, mask=mask)

            values = torch.zeros(10, device="cuda")
            add_one[(1,)](values, 10, BLOCK=16)
            found["triton_launch"] = "ok" if bool((values == 1).all()) else f"wrong result {values.tolist()}"
        except Exception as error:
            found["triton_launch"] = f"fails: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()
    report = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {package: _version(package) for package in PACKAGES},
        "imported_from": {module: _origin(module) for module in MODULES},
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "toolchain": toolchain(),
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        report["device"] = torch.cuda.get_device_name(0)
        report["multiprocessors"] = properties.multi_processor_count
        report["memory_gib"] = properties.total_memory / 2**30
        report["capability"] = f"{properties.major}.{properties.minor}"
        report["ceilings"] = ceilings()
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for name, entry in value.items():
                print(f"  {name}: {entry:.1f}" if isinstance(entry, float) else f"  {name}: {entry}")
        else:
            print(f"{key}: {value}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
