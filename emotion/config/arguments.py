"""Command lines and environments into settings: the argparse half of :mod:`.settings`.

Each settings field that declares a flag becomes one argparse argument, with
its help, check and default, and can come from its ``EMOTION_*`` variable
instead (named by :func:`.settings.env_name`); a flag given wins.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field
from typing import Any

from emotion.config.settings import Flag, flags


class UsageError(Exception):
    """A bad flag or environment value; the message names the one the user set."""


def add_flags(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """One flag per field that has one; absent flags stay off the namespace (SUPPRESS)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for item, flag in flags(cls):
        target: argparse._ActionsContainer = parser
        if flag.group is not None:
            if flag.group not in groups:
                groups[flag.group] = parser.add_argument_group(flag.group)
            target = groups[flag.group]
        help = _help(item, flag).replace("%", "%%")
        if flag.switch:
            target.add_argument(
                flag.name, dest=flag.dest, action="store_true", default=argparse.SUPPRESS, help=help
            )
        else:
            target.add_argument(
                flag.name,
                dest=flag.dest,
                type=_argument_type(item, flag),
                default=argparse.SUPPRESS,
                metavar=flag.metavar,
                help=help,
            )


def _help(item: Field[Any], flag: Flag) -> str:
    if flag.switch:
        return f"{flag.help} (env {flag.env}=1)"
    default = flag.default_text
    if default is None and item.default is not MISSING and item.default is not None:
        default = str(item.default)
    return f"{flag.help} (env {flag.env}" + (f"; default {default})" if default else ")")


def _parse(item: Field[Any], flag: Flag, text: str) -> Any:
    """Text into the field's value, checked as the field checks it (ValueError if not)."""
    value = flag.parse(text)
    check = item.metadata.get("check")
    if check is not None and not flag.raw:
        check(value)
    return value


def _argument_type(item: Field[Any], flag: Flag) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return _parse(item, flag, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def values_of(
    args: argparse.Namespace, cls: type[Any], environ: Mapping[str, str]
) -> dict[str, Any]:
    """Each flag's value: from the command line, else its variable; unset ones are absent."""
    values: dict[str, Any] = {}
    for item, flag in flags(cls):
        if hasattr(args, flag.dest):
            values[flag.dest] = getattr(args, flag.dest)
            continue
        for name in (flag.env, *flag.aliases):
            text = environ.get(name)
            if text:  # set but empty counts as unset, as in a shell
                try:
                    values[flag.dest] = _parse(item, flag, text)
                except ValueError as exc:
                    raise UsageError(f"{name} {exc}") from None
                break
    return values
