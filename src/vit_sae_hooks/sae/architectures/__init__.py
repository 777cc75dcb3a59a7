"""The SAE architectures, one class per file; importing this package registers each of them.

Add an architecture by writing a subclass of :class:`~vit_sae_hooks.sae.sae.SAE` in a new file here,
decorating it with :func:`~vit_sae_hooks.sae.registry.register` and importing it below.
"""

from vit_sae_hooks.sae.architectures.batchtopk import BatchTopKSAE
from vit_sae_hooks.sae.architectures.gated import GatedSAE
from vit_sae_hooks.sae.architectures.jumprelu import JumpReLUSAE
from vit_sae_hooks.sae.architectures.matryoshka import MatryoshkaSAE
from vit_sae_hooks.sae.architectures.relu import ReLUSAE
from vit_sae_hooks.sae.architectures.topk import TopKSAE
from vit_sae_hooks.sae.architectures.transcoder import Transcoder

__all__ = ["BatchTopKSAE", "GatedSAE", "JumpReLUSAE", "MatryoshkaSAE", "ReLUSAE", "TopKSAE", "Transcoder"]
