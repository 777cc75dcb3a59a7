"""The native CPU encode: one GEMM into a reused workspace, then a C++ top-k pass at memory speed.

``backend="native"`` (what ``"auto"`` picks for float32 CPU tensors when the kernel builds):

1. ``torch.mm(x, W_enc, out=workspace)``: the encode GEMM, written into a buffer kept between
   calls, so the ``[N, d_sae]`` pre-activations cost no fresh pages (a fresh 315 MB tensor costs
   ~0.1 s of page faults on a 2-core VM: 15 % of the GEMM itself).
2. ``topk_merge.cpp``: per row, a 16-wide SIMD compare against the current k-th best value
   rejects almost every column; survivors are appended to a small buffer compacted by
   ``std::nth_element``. The bias is added inside this pass (not by ``addmm``). Rows are split
   over ``torch.get_num_threads()`` Python threads (ctypes releases the GIL).

The kernel is compiled on first use with the system C++ compiler (``$CXX``, else ``c++``/``g++``/
``clang++``; about a second) into ``$VIT_SAE_HOOKS_CACHE`` (default ``~/.cache/vit_sae_hooks``),
keyed by the source, compiler, flags and CPU. Without a compiler, or with
``VIT_SAE_HOOKS_NATIVE=0``, ``"auto"`` uses the pure-PyTorch path; ``status()`` says which and why.

Memory: the workspace holds at most ``workspace_limit()`` bytes (default 2 GiB; larger inputs are
encoded in row blocks that fit) and stays allocated until ``free_workspace()``. Row blocks cost
each a repacking of ``W_enc`` by the GEMM: at N 8192, d_sae 49152 one 1.6 GB block measured 1.00x
the GEMM floor, blocks of 5461 rows 1.08x, of 1024 rows 1.21x.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_sae_hooks.errors import ConfigError

__all__ = ["available", "encode_forward", "encode_forward_chunked", "free_workspace", "merge_topk",
           "set_workspace_limit", "status", "workspace_limit"]

_SOURCE = Path(__file__).with_name("topk_merge.cpp")
_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])  # -march=native is refused by some compilers
_ENTRY_BYTES = 16  # sizeof(Entry) in topk_merge.cpp: float + padding + int64
# Rows per thread below which splitting costs more than it saves (thread hand-off ~50 us).
_MIN_ROWS_PER_THREAD = 64

_workspace_limit_bytes = 2 << 30
_local = threading.local()


class _BuildResult:
    def __init__(self, library: ctypes.CDLL | None, reason: str):
        self.library = library
        self.reason = reason


def _cache_dir() -> Path:
    root = os.environ.get("VIT_SAE_HOOKS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vit_sae_hooks"
    )
    return Path(root) / "kernels"


def _cpu_identity() -> str:
    """What -march=native depends on: a library built for one CPU may not run on another."""
    identity = platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features", "model name")):
                    identity += line
    except OSError:
        identity += platform.processor()
    return identity


def _compiler() -> str | None:
    configured = os.environ.get("CXX")
    if configured:
        return configured
    return next((found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))), None)


def _compile(compiler: str, flags: list[str], target: Path) -> str | None:
    """Build the shared library at ``target`` atomically; the compiler's complaint on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        command = [compiler, *flags, "-std=c++17", "-shared", "-fPIC", str(_SOURCE), "-o", str(partial)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{' '.join(command)}: {error}"
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}"
        os.replace(partial, target)  # concurrent builders each rename a complete file
    return None


def _load(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.topk_merge_f32.restype = None
    library.topk_merge_f32.argtypes = [pointer, size, pointer, size, size, size, size, size,
                                       pointer, pointer, pointer, pointer]
    library.topk_scratch_entries.restype = size
    library.topk_scratch_entries.argtypes = [size]
    return library


@functools.cache
def _build() -> _BuildResult:
    if os.environ.get("VIT_SAE_HOOKS_NATIVE", "1") == "0":
        return _BuildResult(None, "disabled by VIT_SAE_HOOKS_NATIVE=0")
    compiler = _compiler()
    if compiler is None:
        return _BuildResult(None, "no C++ compiler found (set CXX or install g++/clang++)")
    source = _SOURCE.read_bytes()
    failures = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(),
                                         _cpu_identity().encode()])).hexdigest()[:16]
        target = _cache_dir() / f"topk_merge-{key}.so"
        if not target.exists():
            try:
                failure = _compile(compiler, flags, target)
            except OSError as error:  # an unwritable cache directory, say
                failure = f"cannot write {target.parent}: {error}"
            if failure:
                failures.append(failure)
                continue
        try:
            return _BuildResult(_load(target), f"built with {compiler} {' '.join(flags)} at {target}")
        except OSError as error:
            failures.append(f"loading {target}: {error}")
    return _BuildResult(None, "could not build the native top-k kernel: " + " | ".join(failures))


def available() -> bool:
    """Whether the native kernel is built and loaded (building it on the first call).

    Example:
        >>> backend = "native" if available() else "torch"
    """
    return _build().library is not None


def status() -> str:
    """One line saying whether the native CPU kernel is in use, and where it lives or why not.

    Example:
        >>> print(status())  # doctest: +SKIP
        built with /usr/bin/c++ -O3 -march=native at ~/.cache/vit_sae_hooks/kernels/topk_merge-....so
    """
    return _build().reason


def _library() -> ctypes.CDLL:
    library = _build().library
    if library is None:
        raise ConfigError(f"backend='native' is unavailable: {status()}. Use backend='torch'.")
    return library


def workspace_limit() -> int:
    """Bytes the reused pre-activation workspace may hold (per thread); larger encodes run in row blocks."""
    return _workspace_limit_bytes


def set_workspace_limit(n_bytes: int) -> None:
    """Cap the workspace (bytes, per calling thread); frees a larger one already held.

    Example:
        >>> set_workspace_limit(256 * 2**20)  # encode in row blocks of at most 256 MiB
    """
    global _workspace_limit_bytes  # noqa: PLW0603 - one process-wide limit, as documented above
    if not isinstance(n_bytes, int) or n_bytes < 4:
        raise ConfigError(f"workspace limit must be a positive number of bytes, got {n_bytes!r}.")
    _workspace_limit_bytes = n_bytes
    held = getattr(_local, "workspace", None)
    if held is not None and held.numel() * held.element_size() > n_bytes:
        free_workspace()


def free_workspace() -> None:
    """Release this thread's workspace (it is reallocated by the next native encode).

    Example:
        >>> free_workspace()
    """
    _local.workspace = None


def _workspace(n_elements: int) -> Tensor:
    held = getattr(_local, "workspace", None)
    if held is None or held.numel() < n_elements:
        _local.workspace = held = None  # drop the old buffer before allocating the new one
        # A normal tensor even when allocated under inference_mode: an inference tensor could not
        # be written by later calls made outside it.
        with torch.inference_mode(False):
            held = torch.empty(n_elements, dtype=torch.float32)
        _local.workspace = held
    return held[:n_elements]


@functools.cache
def _pool(process_id: int, n_threads: int) -> ThreadPoolExecutor:
    # Keyed by process: a forked child (a DataLoader worker, say) inherits the parent's pool
    # object but not its threads, and would wait forever on it.
    return ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="vit_sae_topk")


def merge_topk(
    block: Float[Tensor, "n cols"],
    bias: Float[Tensor, " cols"] | None,
    col_offset: int,
    values: Float[Tensor, "n k"],
    indices: Int[Tensor, "n k"],
    filled: Int[Tensor, " n"],
) -> None:
    """Fold ``block (+ bias)``'s columns into each row's running top-k, in place.

    ``values``/``indices`` hold ``filled[r]`` entries of row ``r`` (unsorted) and are updated to
    the best ``min(k, filled[r] + cols)`` of those entries and the block's; column ``c`` is
    reported as index ``col_offset + c``. All tensors are float32/int64 on the CPU;
    ``block`` needs unit column stride, the others must be contiguous.

    Example:
        >>> values, indices = torch.empty(4, 3), torch.empty(4, 3, dtype=torch.long)
        >>> filled = torch.zeros(4, dtype=torch.long)
        >>> merge_topk(torch.randn(4, 32), None, 0, values, indices, filled)
    """
    library = _library()
    n_rows, cols = block.shape
    k = values.shape[1]
    if n_rows == 0 or cols == 0:
        return
    if block.dtype != torch.float32 or block.device.type != "cpu" or block.stride(1) != 1:
        raise ConfigError(f"merge_topk needs a float32 CPU block with unit column stride, got {block.dtype} "
                          f"on {block.device} with strides {block.stride()}.")
    # The kernel writes through raw pointers: anything but these exact layouts would corrupt memory.
    state = {"values": (values, torch.float32, (n_rows, k)), "indices": (indices, torch.int64, (n_rows, k)),
             "filled": (filled, torch.int64, (n_rows,))}
    for name, (tensor, dtype, shape) in state.items():
        if tensor.dtype != dtype or tuple(tensor.shape) != shape or not tensor.is_contiguous() or tensor.is_cuda:
            raise ConfigError(f"merge_topk's {name} must be a contiguous {dtype} CPU tensor of shape {shape}, "
                              f"got {tensor.dtype} {tuple(tensor.shape)} (contiguous: {tensor.is_contiguous()}).")
    if k < 1:
        raise ConfigError("merge_topk needs k >= 1 columns in values/indices.")
    if bias is not None and tuple(bias.shape) != (cols,):
        raise ConfigError(f"merge_topk's bias has shape {tuple(bias.shape)}; it must be [{cols}], one per block column.")
    if bias is not None:
        bias = bias.contiguous()
    n_threads = max(1, min(torch.get_num_threads(), n_rows // _MIN_ROWS_PER_THREAD))
    rows_per_thread = -(-n_rows // n_threads)
    scratch_bytes = int(library.topk_scratch_entries(k)) * _ENTRY_BYTES
    scratch = torch.empty(n_threads, scratch_bytes, dtype=torch.uint8)
    arguments = [
        (block.data_ptr(), block.stride(0), None if bias is None else bias.data_ptr(), start,
         min(n_rows, start + rows_per_thread), cols, col_offset, k, values.data_ptr(), indices.data_ptr(),
         filled.data_ptr(), scratch[thread].data_ptr())
        for thread, start in enumerate(range(0, n_rows, rows_per_thread))
    ]
    if len(arguments) == 1:
        library.topk_merge_f32(*arguments[0])
        return
    for future in [_pool(os.getpid(), n_threads).submit(library.topk_merge_f32, *args) for args in arguments]:
        future.result()


def _empty_state(n_rows: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    return (torch.empty(n_rows, k, dtype=torch.float32), torch.empty(n_rows, k, dtype=torch.int64),
            torch.zeros(n_rows, dtype=torch.int64))


def encode_forward(
    x: Float[Tensor, "n d_in"], W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, " d_sae"] | None, k: int
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """Top-``k`` of ``x @ W_enc + b_enc`` per row (unsorted): one GEMM per row block + the native pass.

    Example:
        >>> values, indices = encode_forward(torch.randn(4, 8), torch.randn(8, 32), None, 3)
    """
    n_rows, d_sae = x.shape[0], W_enc.shape[1]
    values, indices, filled = _empty_state(n_rows, k)
    rows_per_block = max(1, min(n_rows, _workspace_limit_bytes // (4 * d_sae)))
    for start in range(0, n_rows, rows_per_block):
        stop = min(n_rows, start + rows_per_block)
        pre = _workspace((stop - start) * d_sae).view(stop - start, d_sae)
        with torch.no_grad():  # out= is not differentiable; TopKEncode supplies the gradients
            torch.mm(x[start:stop], W_enc, out=pre)
        merge_topk(pre, b_enc, 0, values[start:stop], indices[start:stop], filled[start:stop])
    return values, indices


def encode_forward_chunked(
    x: Float[Tensor, "n d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"] | None,
    k: int,
    chunk_size: int,
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """``encode_forward`` computing ``chunk_size`` latents at a time: extra memory ``n * chunk_size`` floats.

    Example:
        >>> values, indices = encode_forward_chunked(torch.randn(4, 8), torch.randn(8, 32), None, 3, 16)
    """
    n_rows, d_sae = x.shape[0], W_enc.shape[1]
    values, indices, filled = _empty_state(n_rows, k)
    chunk = torch.empty(n_rows * min(chunk_size, d_sae), dtype=torch.float32)
    for start in range(0, d_sae, chunk_size):
        stop = min(d_sae, start + chunk_size)
        pre = chunk[: n_rows * (stop - start)].view(n_rows, stop - start)
        with torch.no_grad():
            torch.mm(x, W_enc[:, start:stop], out=pre)
        merge_topk(pre, None if b_enc is None else b_enc[start:stop], start, values, indices, filled)
    return values, indices
