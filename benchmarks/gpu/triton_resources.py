"""Compile the Triton kernels for a Hopper GPU (sm_90) without one, and report what each launch needs.

For every launch configuration the CUDA paths use at CLIP shapes, prints the registers per thread,
the stack frame (bytes per thread spilled to local memory: anything above 0 is slow), the shared
memory, and whether the encoder's GEMM runs on the tensor cores (``HGMMA`` in the machine code).
Needs only the triton package (its bundled ptxas and cuobjdump); no GPU, no CUDA driver.

    python benchmarks/gpu/triton_resources.py            # the configurations in use
    python benchmarks/gpu/triton_resources.py --sweep    # also the alternatives to them
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from vit_sae_hooks.kernels import triton_decode, triton_encode

TARGET = GPUTarget("cuda", 90, 32)
TRITON_TYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
ENCODE_SIGNATURE = {
    "x_ptr": "*{t}", "w_ptr": "*{t}", "b_ptr": "*{t}", "keys_ptr": "*i64", "n_rows": "i32", "d_in": "i32",
    "d_sae": "i32", "stride_x_row": "i32", "stride_x_col": "i32", "stride_w_row": "i32", "stride_w_col": "i32",
    "candidates_per_row": "i32",
}


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def resources(fn, signature: dict[str, str], constants: dict[str, object], num_warps: int) -> dict[str, object]:
    """Registers, stack and shared bytes, and tensor-core instruction count of one compiled kernel."""
    signature = {**signature, **dict.fromkeys(constants, "constexpr")}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants), target=TARGET,
                              options={"num_warps": num_warps})
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "--dump-sass", path], capture_output=True, text=True,
                              check=True).stdout
    fields = dict(re.findall(r"(REG|STACK):(\d+)", usage))
    return {"registers": int(fields["REG"]), "stack_bytes": int(fields["STACK"]),
            "shared_bytes": compiled.metadata.shared, "hgmma": sass.count("HGMMA")}


def encode_configs(sweep: bool) -> list[tuple[str, int, int, int]]:
    """(dtype, k, block_n, num_warps) at the CLIP shapes' k; block_l follows from k as in encode_forward."""
    launches = [(64, triton_encode.CUDA_NUM_WARPS)]
    if sweep:
        launches += [(64, 4), (32, 4), (32, 8), (128, 8)]
    return [(dtype, k, block_n, warps) for dtype in TRITON_TYPES for k in (32, 64) for block_n, warps in launches]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also compile the alternative tile shapes and warp counts")
    args = parser.parse_args()
    print(f"triton {triton.__version__}, target sm_{TARGET.arch}")
    print(f"{'kernel':<44} {'regs':>5} {'stack B':>8} {'shared B':>9} {'HGMMA':>6}")
    for dtype, k, block_n, warps in encode_configs(args.sweep):
        candidates = triton.next_power_of_2(k)
        block_l = triton_encode.default_block_l(candidates)
        constants = {"HAS_BIAS": True, "INPUT_PRECISION": "ieee", "USE_TL_TOPK": triton_encode.HAS_TL_TOPK,
                     "UPCAST": False, "BLOCK_N": block_n, "BLOCK_L": block_l, "BLOCK_D": triton_encode.BLOCK_D,
                     "KC": candidates}
        signature = {name: kind.format(t=TRITON_TYPES[dtype]) for name, kind in ENCODE_SIGNATURE.items()}
        used = resources(triton_encode._encode_candidates_kernel, signature, constants, warps)
        label = f"encode {dtype} k {k} tile {block_n}x{block_l} warps {warps}"
        print(f"{label:<44} {used['registers']:>5} {used['stack_bytes']:>8} {used['shared_bytes']:>9} {used['hgmma']:>6}")
    for dtype, t in TRITON_TYPES.items():
        decode_kernels = [
            ("gather_sum", triton_decode._gather_sum_kernel,
             {"indices_ptr": "*i64", "weights_ptr": f"*{t}", "table_ptr": f"*{t}", "out_ptr": f"*{t}",
              "n_rows": "i32", "d": "i32", "k": "i32"},
             {"BLOCK_ROWS": triton_decode.GATHER_SUM_BLOCK_ROWS, "BLOCK_D": triton_decode.BLOCK_D}),
            ("gather_dot", triton_decode._gather_dot_kernel,
             {"indices_ptr": "*i64", "rows_ptr": f"*{t}", "table_ptr": f"*{t}", "out_ptr": f"*{t}", "d": "i32", "k": "i32"},
             {"BLOCK_K": 64, "BLOCK_D": triton_decode.GATHER_DOT_BLOCK_D}),
            ("scatter_outer", triton_decode._scatter_outer_kernel,
             {"order_ptr": "*i64", "starts_ptr": "*i64", "weights_ptr": f"*{t}", "rows_ptr": f"*{t}",
              "out_ptr": "*fp32", "d": "i32", "k": "i32"},
             {"BLOCK_D": triton_decode.BLOCK_D}),
        ]
        for name, fn, signature, constants in decode_kernels:
            used = resources(fn, signature, constants, 4)
            label = f"{name} {dtype} warps 4"
            print(f"{label:<44} {used['registers']:>5} {used['stack_bytes']:>8} {used['shared_bytes']:>9} {used['hgmma']:>6}")


if __name__ == "__main__":
    main()
