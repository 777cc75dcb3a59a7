"""Find the operations that make a CUDA program wait for the GPU, on any device (the CPU included).

On CUDA a host synchronisation comes from reading a value back (``.item()``, ``bool(t)``, ``float(t)``), or from
an operation whose output shape depends on the data (``nonzero``, boolean-mask indexing, ``masked_select``,
``unique``, ...). These are the same aten operations on every device, so a ``TorchDispatchMode`` that records them
finds, on this CPU machine, what ``torch.cuda.set_sync_debug_mode`` would report on a GPU (tests/kernels/test_cuda.py
runs that one). It cannot see device-to-host copies (everything is on the CPU here) or synchronisation inside a
CUDA kernel's own C++ code.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operations that read device memory on the host, or whose output size depends on the data.
READS_BACK = {
    "aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::nonzero", "aten::masked_select",
    "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::bincount", "aten::histc",
}
INDEXING = {"aten::index.Tensor", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}
# repeat_interleave is only data-dependent without output_size.
REPEAT = "aten::repeat_interleave.Tensor"


@dataclass
class HostRead:
    op: str
    stack: list[traceback.FrameSummary]  # the Python frames of the call, outermost first
    project: str  # the part of a file path that marks the project's own frames

    @property
    def project_frames(self) -> list[traceback.FrameSummary]:
        """The project's frames of the call, outermost first."""
        return [frame for frame in self.stack if self.project in frame.filename]

    @property
    def where(self) -> list[str]:
        """The project's three innermost frames, ``file:line``."""
        return [f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" for frame in self.project_frames[-3:]]

    def __str__(self) -> str:
        return f"{self.op} at {' <- '.join(reversed(self.where)) or '(no project frame)'}"


class _Recorder(TorchDispatchMode):
    def __init__(self, project: str) -> None:
        super().__init__()
        self.project = project
        self.reads: list[HostRead] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        overload = f"{name}.{func._overloadname}"
        reads = name in READS_BACK
        if name in INDEXING or overload in INDEXING:
            reads = any(isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)
                        for index in args[1] if index is not None)
        if overload == REPEAT:
            reads = kwargs.get("output_size") is None and (len(args) < 3 or args[2] is None)
        if reads:
            self.reads.append(HostRead(str(func), traceback.extract_stack()[:-1], self.project))
        return func(*args, **kwargs)


@contextmanager
def host_reads(project: str = "vit_sae_hooks") -> Iterator[list[HostRead]]:
    """Record, inside the block, every operation that would synchronise a CUDA device with the host.

    Example:
        >>> with host_reads() as reads:
        ...     sae(x)
        >>> assert not reads, [str(read) for read in reads]
    """
    recorder = _Recorder(project)
    with recorder:
        yield recorder.reads
