"""What every ``vit-sae`` command shares: config fields declared once with their help text and turned into
command-line options, whole-number parsing, and library errors reported as one line.

Example:
    >>> parser = argparse.ArgumentParser(); add_config_options(parser, TrainConfig)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

from vit_sae_hooks.errors import VitSaeHooksError

# The metadata key under which a dataclass field keeps its command-line description.
OPTION = "vit_sae_hooks_option"


def option(
    default: Any, help: str, *, flags: Sequence[str] = (),
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None, sweep: bool = False, **argparse_kwargs: Any,
) -> Any:
    """A dataclass field whose command-line option is generated from it: ``--field-name`` (plus ``flags``),
    typed from the annotation, with ``help`` as its help text and the default shown.

    ``choices`` may be a function (e.g. the registered architectures, known only at run time); ``sweep``
    lets commands that build several configs take a comma-separated list (``--k 16,32,64``, see
    :func:`configs_from_args`); other keyword arguments go to ``argparse`` (``nargs``, ``const``, ``metavar``).

    Example:
        >>> seed: int = option(0, "random seed of initialisation and data order")
    """
    metadata = {OPTION: {"help": help, "flags": tuple(flags), "choices": choices, "sweep": sweep,
                         "argparse": argparse_kwargs}}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def whole_number(text: str) -> int:
    """An integer from text such as ``2e6`` or ``2000000`` (budgets are easier to write in the first form).

    Example:
        >>> whole_number("2e6")
        2000000
    """
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (e.g. 2e6 or 2000000)") from error
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (e.g. 2e6 or 2000000)")
    return int(value)


def comma_separated(element: Callable[[str], Any], choices: Sequence[str] | None = None) -> Callable[[str], list[Any]]:
    """An argparse type reading ``"a,b,c"`` as a list of ``element`` values (each one of ``choices`` if given).

    Example:
        >>> comma_separated(int)("128,512,2048")
        [128, 512, 2048]
    """

    def parse(text: str) -> list[Any]:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list (e.g. 16,32,64)")
        if choices is not None:
            for item in items:
                if item not in choices:
                    raise argparse.ArgumentTypeError(f"invalid choice {item!r} (choose from {', '.join(choices)})")
        return [element(item) for item in items]

    return parse


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        if len(members) == 1:
            return members[0], True
    return annotation, False


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, config_class: type, sweeps: bool = False
) -> None:
    """Add one option per field of the dataclass ``config_class`` that was declared with :func:`option`.

    The destination of each option is the field name, so ``config_from_args`` rebuilds the config. With
    ``sweeps``, fields declared ``sweep=True`` take comma-separated lists (for :func:`configs_from_args`).

    Example:
        >>> add_config_options(parser.add_argument_group("SAE"), TrainConfig)
    """
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        spec = field.metadata.get(OPTION)
        if spec is None:
            continue
        annotation, optional = _unwrap_optional(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kwargs: dict[str, Any] = {"dest": field.name, "default": default}
        shown_default = "none" if default is None else default
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is tuple and typing.get_args(annotation)[-1] is Ellipsis:
            kwargs["type"] = comma_separated(typing.get_args(annotation)[0])
            shown_default = "none" if default is None else ",".join(map(str, default))
        elif typing.get_origin(annotation) is tuple:
            element = typing.get_args(annotation)[0]
            kwargs.update(nargs=len(typing.get_args(annotation)), type=element)
            shown_default = " ".join(map(str, default))
        elif typing.get_origin(annotation) is Literal:
            kwargs["choices"] = typing.get_args(annotation)
        elif annotation is int:
            kwargs["type"] = whole_number
        elif annotation in (float, str):
            kwargs["type"] = annotation
        choices = spec["choices"]
        if choices is not None:
            kwargs["choices"] = tuple(choices() if callable(choices) else choices)
        if sweeps and spec.get("sweep"):
            element = whole_number if annotation is int else annotation
            kwargs["type"] = comma_separated(element, kwargs.pop("choices", None))
            kwargs["metavar"] = f"{field.name.upper()}[,...]"
        kwargs.update(spec["argparse"])
        if optional and "metavar" not in kwargs and "choices" not in kwargs and annotation is not bool:
            kwargs["metavar"] = field.name.upper()
        flags = ["--" + field.name.replace("_", "-"), *spec["flags"]]
        parser.add_argument(*flags, help=f"{spec['help']} (default: {shown_default})", **kwargs)


def config_from_args(config_class: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The dataclass ``config_class`` built from the options :func:`add_config_options` added (plus ``overrides``).

    Example:
        >>> config = config_from_args(TrainConfig, parser.parse_args(["--k", "64"]))
    """
    values = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_class)
        if OPTION in field.metadata and hasattr(args, field.name)
    }
    values.update(overrides)
    return config_class(**values)


def configs_from_args(config_class: type, args: argparse.Namespace, **overrides: Any) -> list[Any]:
    """One config per combination of the comma-separated values of ``sweep`` options (``--k 16,32 --arch
    topk,batchtopk``: four), in the order the values were given; duplicates (e.g. ``k`` of an architecture that
    ignores it) are dropped.

    Example:
        >>> configs = configs_from_args(TrainConfig, parser.parse_args(["--k", "16,32,64"]))  # three configs
    """
    swept = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_class)
        if field.metadata.get(OPTION, {}).get("sweep") and isinstance(getattr(args, field.name, None), list)
    }
    configs: list[Any] = []
    for combination in itertools.product(*swept.values()):
        values = dict(zip(swept, combination, strict=True))
        config = config_from_args(config_class, argparse.Namespace(**{**vars(args), **values}), **overrides)
        if config not in configs:
            configs.append(config)
    return configs


def run_reporting_errors(prog: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``run(args)``, with a library error printed as one line on stderr (exit status 2) instead of a traceback.

    Example:
        >>> run_reporting_errors("vit-sae train", train_command, args)
    """
    try:
        return run(args)
    except VitSaeHooksError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
