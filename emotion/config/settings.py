"""How a setting is declared: its check, its flag, and parsers from text.

A settings class (see :mod:`emotion.config`) is a frozen dataclass whose
fields carry, in their metadata, a check (the value's allowed range) and,
when a command line sets them, a :class:`Flag`. :func:`validate` runs the
checks; :func:`flags` and :func:`from_values` let the CLI generate its flags
and build settings from them. grpclib's ``Configuration`` is the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Check = Callable[[Any], None]
Parse = Callable[[str], Any]


def env_name(command: str, flag: str) -> str:
    """The rule: ``EMOTION_``, the command unless it is ``serve``, then the flag's name.

    ``--max-queue`` of serve is ``EMOTION_MAX_QUEUE``; ``--timeout`` of predict
    is ``EMOTION_PREDICT_TIMEOUT``. Serve, which containers configure, keeps the
    short names; predict's are apart so that a shell set up for a server (its
    ``EMOTION_TLS_CERT``) does not hand the server's files to a client.
    """
    prefix = "" if command == "serve" else f"{command.upper()}_"
    return f"EMOTION_{prefix}{flag.removeprefix('--').upper().replace('-', '_')}"


@dataclass(frozen=True)
class Flag:
    """How a command line sets a field."""

    name: str
    command: str
    #: Text to value; raises ValueError saying what it expected.
    parse: Parse
    help: str
    #: The default as help shows it; None shows the field's own.
    default_text: str | None = None
    #: Older variable names, still read after :attr:`env`.
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    #: The help section: "limits", "security" or None.
    group: str | None = None
    #: Takes no value: given means true.
    switch: bool = False
    #: The flag's value is not the field's: the CLI makes one from the other
    #: (a file of tokens, seconds into a ConnectionAge).
    raw: bool = False

    @property
    def env(self) -> str:
        return env_name(self.command, self.name)

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")


def meta(
    *,
    check: Check | None = None,
    flag: Flag | None = None,
    nested: type[Any] | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """A field's metadata: its check and flag, or the settings class it holds.

    ``group`` is the help section of the nested class's flags.
    """
    return {"check": check, "flag": flag, "nested": nested, "group": group}


def flag_meta(
    command: str,
    name: str,
    parse: Parse,
    check: Check,
    help: str,
    *,
    nested: type[Any] | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The metadata of a field that ``command``'s flag ``name`` sets (with ``nested``'s)."""
    return meta(check=check, flag=Flag(name, command, parse, help, **more), nested=nested)


def flags(
    cls: type[Any], group: str | None = None, command: str | None = None
) -> Iterator[tuple[Field[Any], Flag]]:
    """Every flag of ``cls`` and of the settings it nests, in field order.

    A nested class's flags belong to the command of the field that holds it,
    so one class (ClientTls) serves several commands, each with its variables.
    """
    for item in fields(cls):
        flag: Flag | None = item.metadata.get("flag")
        if flag is not None:
            if command is not None and flag.command != command:
                flag = replace(flag, command=command)
            yield item, flag if flag.group or not group else replace(flag, group=group)
        if item.metadata.get("nested") is not None:
            outer = command or (flag.command if flag is not None else None)
            yield from flags(item.metadata["nested"], item.metadata.get("group") or group, outer)


def from_values(cls: type[T], values: Mapping[str, Any], **given: Any) -> T:
    """Build ``cls`` from flag values (by :attr:`Flag.dest`); absent ones keep their default.

    ``given`` sets fields directly, and must set those whose flag is raw. An
    optional nested setting is built only when one of its flags has a value.
    """
    kwargs: dict[str, Any] = {}
    for item in fields(cls):  # type: ignore[arg-type]
        flag: Flag | None = item.metadata.get("flag")
        inner: type[Any] | None = item.metadata.get("nested")
        if item.name in given:
            kwargs[item.name] = given[item.name]
        elif flag is not None and flag.raw:
            raise TypeError(f"{cls.__name__}.{item.name} must be given: its flag is raw")
        elif flag is not None and flag.dest in values:
            kwargs[item.name] = values[flag.dest]
        elif inner is not None and (
            item.default is MISSING or any(f.dest in values for _, f in flags(inner))
        ):
            kwargs[item.name] = from_values(inner, values)
        elif item.default is MISSING and item.default_factory is MISSING:
            kwargs[item.name] = None  # let the check say it is missing
    return cls(**kwargs)


class Settings:
    """Base of a settings dataclass: it checks every field once made."""

    def __post_init__(self) -> None:
        validate(self)


def validate(settings: Any) -> None:
    """Run each field's check; the error names the class, the field and its flag."""
    for item in fields(settings):
        check: Check | None = item.metadata.get("check")
        if check is None:
            continue
        try:
            check(getattr(settings, item.name))
        except ValueError as exc:
            flag: Flag | None = item.metadata.get("flag")
            named = f" ({flag.name})" if flag is not None and not flag.raw else ""
            raise ValueError(f"{type(settings).__name__}.{item.name}{named} {exc}") from None


# Parsers: text into a value, or ValueError saying what was expected.


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, not {text!r}") from None


def parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"must be a number, not {text!r}") from None


def parse_threads(text: str) -> int | None:
    """A thread count where 0 means: one per CPU (None)."""
    value = parse_int(text)
    if value < 0:
        raise ValueError(f"must be 0 (one per CPU) or more, not {value}")
    return value or None


def parse_optional_port(text: str) -> int | None:
    return parse_int(text) if text else None


def parse_age(text: str) -> float:
    """Seconds of --max-connection-age, where 0 means never."""
    value = parse_float(text)
    is_seconds(value)
    return value


_BYTE_UNITS = {"": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6}
_BYTE_UNITS |= {"mib": 1024**2, "g": 10**9, "gb": 10**9, "gib": 1024**3}


def parse_size(text: str) -> int:
    """Bytes, as a number with an optional unit: 17825792, 17MiB, 20MB."""
    number = text.rstrip("kKmMgGiIbB")
    try:
        value = float(number) * _BYTE_UNITS[text[len(number) :].lower()]
    except (ValueError, KeyError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"must be a size (bytes, or with KiB, MiB, GiB, kB, MB, GB), not {text!r}")
    return int(value)


def parse_pixels(text: str) -> int:
    """A pixel count, plain or in megapixels: 50000000 or 50M."""
    scale = 1_000_000 if text.lower().endswith("m") else 1
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"must be a pixel count (e.g. 50M), not {text!r}")
    return int(value)


def parse_path(text: str) -> Path | None:
    return Path(text) if text else None


def parse_host(text: str) -> str:
    # Accept the bracketed IPv6 form that targets use.
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def parse_bool(text: str) -> bool:
    if text.lower() in {"1", "true", "yes", "on"}:
        return True
    if text.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"must be 1 or 0 (true or false), not {text!r}")


def parse_target(target: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6addr]:port`` for IPv6) into its parts."""
    scheme, found, rest = target.partition("://")
    if found:
        raise ValueError(
            f"target {target!r} is not of the form host:port: leave out {scheme}://, "
            f"gRPC targets have no scheme (try {rest.rstrip('/')!r})"
        )
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"target {target!r} is not of the form host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"target {target!r} has port {port} outside 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def parse_targets(target: str | Sequence[str]) -> list[tuple[str, int]]:
    """Several targets, as a list or one string separated by commas; at least one."""
    parts = target.split(",") if isinstance(target, str) else list(target)
    if not parts or not all(isinstance(part, str) for part in parts):
        raise ValueError(f"target {target!r} is not host:port, nor a list of them")
    return [parse_target(part.strip()) for part in parts]


# Checks: raise ValueError("must be ..., not X") for a bad value.


def at_least(low: int, what: str = "a whole number") -> Check:
    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"must be {what}, {low} or more, not {value!r}")

    return check


def is_port(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"must be a port, 0-65535 (0 picks a free one), not {value!r}")


def is_fixed_port(value: Any) -> None:
    """A port to listen on that must be known in advance (no 0: nothing reports the pick)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"must be a port, 1-65535, not {value!r}")


def is_seconds(value: Any) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a number of seconds, 0 or more, not {value!r}")


def is_positive_seconds(value: Any) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a number of seconds more than 0, not {value!r}")


def optional(check: Check) -> Check:
    def optional(value: Any) -> None:
        if value is not None:
            check(value)

    return optional


def one_of(choices: tuple[str, ...]) -> Check:
    def check(value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")

    return check


def is_text(value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be non-empty text, not {value!r}")


def is_path(value: Any) -> None:
    if not isinstance(value, (str, Path)) or not str(value):
        raise ValueError(f"must be a file path, not {value!r}")


def is_paths(value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(p, str) and p for p in value):
        raise ValueError(f"must be a tuple of file paths, not {value!r}")


def is_a(*types: type) -> Check:
    def check(value: Any) -> None:
        if not isinstance(value, types):
            raise ValueError(f"must be {' or '.join(t.__name__ for t in types)}, not {value!r}")

    return check


def is_tokens(value: Any) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(t, str) and t and t.isprintable() and " " not in t for t in value
    ):
        raise ValueError("must be a tuple of printable tokens without spaces")


def is_target(value: Any) -> None:
    parse_targets(value if isinstance(value, str) else "")
