"""The ImageNet-1k class names and prompt templates shipped with the library, for zero-shot heads.

The names are CLIP's cleaned-up ImageNet class names in the standard class-index order (the order of the
sorted WordNet-id folders of ImageNet's train and val sets); the templates are OpenAI CLIP's 80 ImageNet
prompts, each with a ``{}`` for the class name.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

# The seven prompts of OpenAI's prompt-engineering notebook that do almost as well as all 80.
SIMPLE_TEMPLATE_INDICES = (73, 7, 44, 69, 35, 67, 64)


@cache
def _lines(filename: str) -> tuple[str, ...]:
    text = resources.files("vit_sae_hooks.data").joinpath(filename).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, index ``i`` for class ``i``.

    Example:
        >>> imagenet_class_names()[207]
        'Golden Retriever'
    """
    return list(_lines("imagenet_classes.txt"))


def imagenet_templates(kind: str = "openai") -> list[str]:
    """Prompt templates with a ``{}`` for the class name: ``"openai"`` (80), ``"simple"`` (7), ``"photo"`` or ``"name"``.

    Example:
        >>> imagenet_templates("photo")
        ['a photo of a {}.']
    """
    from vit_sae_hooks.errors import ConfigError

    templates = _lines("imagenet_templates.txt")
    kinds = {
        "openai": list(templates),
        "simple": [templates[i] for i in SIMPLE_TEMPLATE_INDICES],
        "photo": ["a photo of a {}."],
        "name": ["{}"],
    }
    if kind not in kinds:
        raise ConfigError(
            f"template set {kind!r} is unknown; choose one of {sorted(kinds)} or pass a list of strings with '{{}}'"
        )
    return kinds[kind]
