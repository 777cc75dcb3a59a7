"""The TransformerLens pieces this library builds on, imported in one place, for TransformerLens 3 and 4.

What differs between the two majors, and is papered over here:

- ``HookedRootModule`` is exported at the top level from 3.3 on; 3.0-3.2 have it in ``hook_points`` only, and
  4.x raises ``ImportError`` for that old path.
- ``get_act_name`` lives in ``transformer_lens.utilities`` (3.x and 4.x).
- ``HookPoint.add_hook`` returns its ``LensHandle`` only in 4.x; :func:`add_hook_returning_handle` always does.
- ``run_with_cache(remove_batch_dim=True)`` fails on activations without a token axis before 4.0
  (:data:`REMOVES_BATCH_DIM_ON_2D` says whether the installed version handles them).

Fast paths (scaled-dot-product attention, the fused LayerNorm, the sparse TopK SAE) skip a HookPoint's tensor
when nothing watches it; :func:`has_hooks` is the one test, and it also says yes while an nnsight trace is
running (nnsight instruments modules without torch hooks) and inside :func:`run_every_hook`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib.metadata import version
from typing import Any

from transformer_lens import ActivationCache
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name as tl_get_act_name

try:
    from transformer_lens import HookedRootModule
except ImportError:  # TransformerLens 3.0-3.2
    from transformer_lens.hook_points import HookedRootModule

__all__ = [
    "REMOVES_BATCH_DIM_ON_2D",
    "TL_MAJOR",
    "ActivationCache",
    "HookPoint",
    "HookedRootModule",
    "add_hook_returning_handle",
    "has_hooks",
    "run_every_hook",
    "tl_get_act_name",
]

TL_MAJOR = int(version("transformer-lens").split(".")[0])
REMOVES_BATCH_DIM_ON_2D = TL_MAJOR >= 4

_EVERY_HOOK: ContextVar[bool] = ContextVar("vit_sae_hooks_run_every_hook", default=False)


@contextmanager
def run_every_hook() -> Iterator[None]:
    """Inside the block, every HookPoint computes its tensor, as if something watched it (no fast paths).

    For tools that read HookPoints without TransformerLens hooks and that :func:`has_hooks` cannot detect
    (nnsight traces are detected on their own).

    Example:
        >>> with run_every_hook():
        ...     model(images)  # attention patterns and LayerNorm scales are computed explicitly
    """
    token = _EVERY_HOOK.set(True)
    try:
        yield
    finally:
        _EVERY_HOOK.reset(token)


def _nnsight_tracing(hook_point: HookPoint) -> bool:
    # nnsight 0.8 keeps its per-module state in __dict__["__nnsight__"]; active() is truthy while a trace
    # runs. Its future reads are unknowable, so any active trace counts as watching every hook point.
    state = hook_point.__dict__.get("__nnsight__")
    if state is None:
        return False
    try:
        return bool(state.active()[0])
    except Exception:  # an unknown nnsight version: better slow and right than fast and wrong
        return True


def has_hooks(hook_point: HookPoint) -> bool:
    """Whether anything watches ``hook_point``: a TransformerLens hook, a cache hook, a raw torch forward,
    pre-forward or backward hook, a running nnsight trace, or :func:`run_every_hook`. Fast paths that skip a
    hook's tensor must check this.

    Example:
        >>> has_hooks(model.blocks[0].attn.hook_pattern)
        False
    """
    return bool(
        hook_point._forward_hooks
        or hook_point._forward_pre_hooks
        or hook_point._backward_hooks
        or _EVERY_HOOK.get()
        or _nnsight_tracing(hook_point)
    )


def add_hook_returning_handle(
    hook_point: HookPoint, hook: Callable, dir: str = "fwd", is_permanent: bool = False, prepend: bool = False
) -> Any:
    """``hook_point.add_hook(...)``, returning the ``LensHandle`` on every TransformerLens version.

    Example:
        >>> handle = add_hook_returning_handle(model.hook_dict["blocks.0.hook_resid_post"], splice, prepend=True)
    """
    handle = hook_point.add_hook(hook, dir=dir, is_permanent=is_permanent, prepend=prepend)
    if handle is not None:
        return handle
    handles = hook_point.fwd_hooks if dir == "fwd" else hook_point.bwd_hooks
    return handles[0] if prepend else handles[-1]
