"""The few collective operations training needs, which reduce to no-ops in a single process."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def init_from_environment() -> torch.device:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU) and return this process's device.

    Without torchrun's variables (or with ``WORLD_SIZE=1``) nothing is initialised.

    Example:
        >>> device = init_from_environment()  # under `torchrun --nproc_per_node 2 -m vit_sae_hooks.training ...`
    """
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's index, 0 in a single process."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes, 1 in a single process."""
    return dist.get_world_size() if is_distributed() else 1


def sum_over_processes(tensor: Tensor) -> Tensor:
    """``tensor`` summed over all processes (in place), e.g. per-step statistics."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (a one-element list in a single process)."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    """Wait until every process gets here."""
    if is_distributed():
        dist.barrier()
