"""The TransformerLens pieces this library builds on, imported in one place.

TransformerLens 4 moved ``HookedRootModule`` out of ``hook_points`` and ``get_act_name`` into
``utilities``; every other module imports these names from here.
"""

from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name as _tl_get_act_name

__all__ = ["ActivationCache", "HookPoint", "HookedRootModule", "has_hooks", "tl_get_act_name"]

tl_get_act_name = _tl_get_act_name


def has_hooks(hook_point: HookPoint) -> bool:
    """Whether anything watches ``hook_point``: a TransformerLens hook, a cache hook, or a raw torch
    forward, pre-forward or backward hook. Fast paths that skip a hook's tensor must check this."""
    return bool(hook_point._forward_hooks or hook_point._forward_pre_hooks or hook_point._backward_hooks)
