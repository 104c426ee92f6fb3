"""Command-line options declared once, on the config dataclass a command fills: a field made with `option` carries its
help, and `add_options` turns it into a flag (its type, default and choices from the field) that `options_of`
reads back by field name."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, field, fields
from typing import Any


def option(
    default: Any = MISSING, help: str = "", *, choices: tuple | None = None, flag: str | None = None, metavar: str | None = None
) -> Any:
    """A config field that is also a command-line option: `--field-name` (or `flag`), with `help`; a bool field with
    a true default becomes `--no-field-name`."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag, "metavar": metavar})


def _value_type(annotation: Any, name: str) -> Any:
    """`int` for `int` and `int | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(kinds) != 1:
            raise TypeError(f"option {name}: a flag takes one type or that type | None, not {annotation}")
        return kinds[0]
    return annotation


def add_options(parser: argparse.ArgumentParser, config_class: type, defaults: dict[str, Any] | None = None) -> None:
    """A flag for each `option` field of `config_class`, its default the field's or the one `defaults` gives by field
    name (known only when the command runs, e.g. a settings folder); a field with neither is a required flag."""
    hints = typing.get_type_hints(config_class)
    options = [item for item in fields(config_class) if "help" in item.metadata]
    unknown = set(defaults or {}) - {item.name for item in options}
    if unknown:
        raise TypeError(f"defaults for what {config_class.__name__} has no option for: {', '.join(sorted(unknown))}")
    for item in options:
        default = (defaults or {}).get(item.name, item.default)
        kind, dashed = _value_type(hints[item.name], item.name), item.name.replace("_", "-")
        if kind is bool and default is MISSING:
            raise TypeError(f"option {item.name}: a switch needs a default (its flag turns it to the other value)")
        flag, help_text = item.metadata["flag"], item.metadata["help"]
        if kind is bool:
            action = "store_false" if default else "store_true"
            parser.add_argument(
                flag or (f"--no-{dashed}" if default else f"--{dashed}"), dest=item.name, action=action, help=help_text
            )
            continue
        settings: dict[str, Any] = {"dest": item.name, "type": kind, "help": help_text, "choices": item.metadata["choices"]}
        settings["metavar"] = item.metadata["metavar"]
        if default is MISSING:
            settings["required"] = True
        else:
            settings["default"] = default
            if default is not None:
                settings["help"] += " (default: %(default)s)"
        parser.add_argument(flag or f"--{dashed}", **settings)


def options_of(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The values of `config_class`'s option fields on the parsed command line, by field name."""
    return {item.name: getattr(args, item.name) for item in fields(config_class) if "help" in item.metadata}
