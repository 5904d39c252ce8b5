"""Flags made from settings (mnistlab/options.py): each flag's name, type, default and help come from one place.

`add_config_flags(parser, TrainConfig)` adds a flag per setting of a configuration dataclass;
`add_shared(parser, "data_dir", ...)` adds the flags that several commands share, each
defined once. A flag's help ends with "(default: ...)", taken from the setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection

from mnistlab.data import DATA_DIR
from mnistlab.datasets import DATASET
from mnistlab.options import DEVICE, ONE_THREAD, THREADS, Option, option_of

SHARED = {"data_dir": DATA_DIR, "dataset": DATASET, "device": DEVICE, "threads": THREADS}


def add_one_thread_flag(parser: argparse.ArgumentParser) -> None:
    """--threads for a command that trains or evaluates one model: 1 by default (options.ONE_THREAD)."""
    add_flag(parser, "threads", ONE_THREAD)


def add_shared(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the shared flags `names` (keys of SHARED): --data-dir, --dataset, --device, --threads."""
    for name in names:
        add_flag(parser, name, SHARED[name])


def add_config_flags(
    parser: argparse.ArgumentParser, config: type, given_only: bool = False, names: Collection[str] | None = None
) -> None:
    """A flag per setting of the dataclass `config`, in the order of its fields; fields that are
    not settings (declared without `option()`) get none, and with `names`, those not named.

    With `given_only`, a flag left out is None rather than the setting's default, so that a
    command can tell the flags given (`given_settings`); the help still states the default.
    """
    hints = typing.get_type_hints(config)
    for field in settings_of(config, names):
        add_flag(parser, field.name, option_of(field), hints[field.name], given_only)


def given_settings(args: argparse.Namespace, config: type, names: Collection[str] | None = None) -> dict:
    """The settings of `config` (with `names`, those named) whose flags hold a value (with
    `given_only`: the flags given)."""
    values = {f.name: getattr(args, f.name, None) for f in settings_of(config, names)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if v is not None}


def settings_of(config: type, names: Collection[str] | None = None) -> list[dataclasses.Field]:
    """The fields of `config` that are settings (declared with `option()`), with `names` those named."""
    return [f for f in dataclasses.fields(config) if option_of(f) is not None and (names is None or f.name in names)]


def add_flag(
    parser: argparse.ArgumentParser, name: str, setting: Option, hint: object = None, given_only: bool = False
) -> None:
    """--name (underscores become dashes) for `setting`, whose values have the type `hint` (or setting.type)."""
    kind, many = value_type(setting.type or hint or type(setting.default))
    help_text = f"{setting.help} (default: {setting.describe_default()})".replace(
        "%", "%%"
    )  # argparse formats help with %
    flag = "--" + name.replace("_", "-")
    default = None if given_only else setting.default
    if kind is bool:
        if setting.default is not False:
            raise TypeError(f"{name}: a switch must default to off")
        parser.add_argument(flag, dest=name, action="store_true", default=default, help=help_text)
        return
    extra = {"nargs": "+", "type": kind} if many else {"type": kind}
    if many and default is not None:
        default = list(default)
    parser.add_argument(
        flag, dest=name, default=default, choices=setting.choices, metavar=setting.metavar, help=help_text, **extra
    )


def value_type(hint: object) -> tuple[type, bool]:
    """(the type of one value, whether the flag takes several) for a field's annotation:
    `int`, `float | None` (a number, or nothing given), `tuple[str, ...]` (several names)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        (hint,) = (a for a in args if a is not type(None))
        return value_type(hint)
    if origin is tuple:
        return args[0], True
    return hint, False
