"""The TransformerLens pieces this library builds on, imported in one place.

TransformerLens 4 moved ``HookedRootModule`` out of ``hook_points`` and ``get_act_name`` into
``utilities``; every other module imports these names from here.
"""

from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name as _tl_get_act_name

__all__ = ["ActivationCache", "HookPoint", "HookedRootModule", "tl_get_act_name"]

tl_get_act_name = _tl_get_act_name
