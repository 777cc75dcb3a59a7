"""Experiments on a HookedViT with SAEs: splicing, feature interventions and patching."""
