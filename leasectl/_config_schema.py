"""Generic validation of raw configuration data against the frozen settings dataclasses.

Private to :mod:`leasectl.config`. The walker knows the handful of types the settings use
(bool, int, float, str, Path, ``X | None``, ``str | int``, ``tuple[X, ...]`` and nested
dataclasses) and collects every problem instead of stopping at the first. Rules that depend
on a field's meaning (ranges, choices, the lease inequalities) live in small tables below.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leasectl.schedule import check_cron, zone_info

#: Field names whose values are secrets: never printed, may come from ``<name>_env`` / ``_file``.
SECRET_FIELDS = frozenset(
    {"dsn", "lock_dsn", "password", "hmac_key", "webhook_url", "routing_key", "api_key", "kek"}
)
SECRET_SUFFIXES = ("_env", "_file")
REDACTED = "<redacted>"

#: Allowed values of string fields that are really enumerations, by key path.
CHOICES: dict[str, tuple[str, ...]] = {
    "logging.format": ("text", "json"),
    "replica.on_wedged": ("release", "exit"),
    "leases.placement": ("spread", "pack"),
    "leases.standby": ("direct", "pooled"),
    "logging.level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    "loops.notifications.smtp.tls": ("none", "starttls", "implicit"),
}

#: Numeric lower bounds other than the default (``>= 0``), by field name.
STRICTLY_POSITIVE_WORDS = ("interval", "ttl", "timeout", "backoff")
AT_LEAST_ONE = frozenset(
    {
        "burst",
        "pool_max_size",
        "concurrency",
        "claim_batch",
        "batch",
        "max_attempts",
        "max_hosts_per_target",
    }
)
UPPER_BOUNDS: dict[str, tuple[float, bool]] = {  # name: (bound, inclusive)
    "acquire_jitter": (1.0, False),
    "port": (65535, True),
}


class Unresolved(str):
    """A secret whose ``<key>_env`` variable is not set (or ``<key>_file`` cannot be read),
    left unresolved on purpose for a command that does not use it (``status``, ``config
    show``); its text says where the value would come from, e.g. ``<from env NAME: not set>``.
    """

    __slots__ = ()


class EnvStr(str):
    """A value that came from an environment variable: parsed according to the target type."""

    __slots__ = ()


@dataclass
class Problems:
    """Collects problems; ``origin(path)`` says where a key path was set."""

    origins: Mapping[str, str]
    default_origin: str
    items: list[str] = field(default_factory=list)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    #: key-path prefix under which an unset secret is left :class:`Unresolved` instead of
    #: being a problem ("": everywhere; None: nowhere)
    unset_secrets: str | None = None

    def origin(self, path: str) -> str:
        probe = path
        while probe:
            if probe in self.origins:
                return self.origins[probe]
            probe = probe.rpartition(".")[0] if "." in probe else ""
        return self.default_origin

    def add(self, path: str, message: str) -> None:
        where = self.origin(path)
        self.items.append(f"{path or '<top level>'}: {message} ({where})")

    def may_leave_unset(self, path: str) -> bool:
        prefix = self.unset_secrets
        if prefix is None:
            return False
        return prefix == "" or path == prefix or path.startswith(prefix + ".")


class _Bad:
    """Sentinel: the value was rejected (a problem has been recorded)."""


BAD: Any = _Bad()


def show(value: Any, path: str = "") -> str:
    """A short, safe rendering of a bad value (secrets are never shown)."""
    if path.rpartition(".")[2] in SECRET_FIELDS:
        return REDACTED
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_secret(name: str) -> bool:
    return name in SECRET_FIELDS


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a settings dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def describe_type(tp: Any) -> str:
    """What an operator must write for this type, in words."""
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        text = " or ".join(describe_type(a) for a in args)
        return text + " or null" if type(None) in typing.get_args(tp) else text
    if origin is tuple:
        return f"a list of {_plural(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_plural(typing.get_args(tp)[1])}"
    return {
        bool: "a boolean (true or false)",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def type_name(tp: Any) -> str:
    """Compact type name for the reference table."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    if origin is dict:
        return f"map[{type_name(typing.get_args(tp)[1])}]"
    if tp is type(None):
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str", Path: "path"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _plural(tp: Any) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(tp, "values")


def build(
    cls: type,
    data: Any,
    path: str,
    ctx: Problems,
    special: Mapping[str, Callable[[Any, str, Problems], Any]] | None = None,
    base: Any = None,
) -> Any:
    """Build ``cls`` from ``data`` (a mapping), recording every problem; BAD if unusable.

    Keys absent from ``data`` keep their value in ``base`` (the enclosing section's default
    for this field), so a partial ``loop: {enabled: true}`` keeps the loop's own default
    interval instead of the class-level default.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        ctx.add(path, f"expected a mapping (section), got {show(data, path)}")
        return BAD
    if base is None:
        try:
            base = cls()
        except TypeError:
            base = None  # a section without defaults: every key is required
    hints = field_types(cls)
    known = set(hints)
    secrets = {n for n in hints if is_secret(n)}
    allowed = known | {s + suf for s in secrets for suf in SECRET_SUFFIXES}
    kwargs: dict[str, Any] = {}
    failed = False
    for key in data:
        if not isinstance(key, str):
            ctx.add(path, f"keys must be strings, got key {show(key)}")
            failed = True
            continue
        if key not in allowed:
            sub = f"{path}.{key}" if path else key
            hint = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
            tip = (
                f"; did you mean {hint[0]!r}?"
                if hint
                else f"; known keys: {', '.join(sorted(known))}"
            )
            ctx.add(sub, f"unknown key {key!r}{tip}")
            failed = True
    for name, tp in hints.items():
        sub = f"{path}.{name}" if path else name
        if name in secrets:
            value = _secret(data, name, sub, ctx)
            if value is BAD:
                failed = True
                continue
            if value is None:
                continue
        elif name not in data:
            continue
        else:
            value = data[name]
        if special and sub in special:
            converted = special[sub](value, sub, ctx)
        elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
            nested_base = getattr(base, name, None) if base is not None else None
            converted = build(tp, _parse_env(value), sub, ctx, special, nested_base)
        else:
            converted = convert(tp, value, sub, ctx, special)
        if converted is BAD:
            failed = True
        else:
            kwargs[name] = converted
    if "cron" in known and "interval" in known and data.get("cron") and "interval" in data:
        ctx.add(
            f"{path}.cron", "set either interval or cron, not both (remove interval to use cron)"
        )
        failed = True
    if failed:
        return BAD
    if base is not None and isinstance(base, cls):
        merged: Any = base
        return dataclasses.replace(merged, **kwargs)
    return cls(**kwargs)


def _secret(data: Mapping[str, Any], name: str, path: str, ctx: Problems) -> Any:
    """Resolve ``name`` / ``name_env`` / ``name_file``; None when none is set."""
    given = [k for k in (name, name + "_env", name + "_file") if k in data]
    if not given:
        return None
    if len(given) > 1:
        ctx.add(path, f"set only one of {', '.join(given)}")
        return BAD
    key = given[0]
    value = data[key]
    if key == name:
        return value
    ref_path = path + key[len(name) :]
    if not isinstance(value, str) or not value:
        ctx.add(ref_path, f"expected a non-empty string, got {show(value)}")
        return BAD
    if key.endswith("_env"):
        if value not in ctx.environ:
            if ctx.may_leave_unset(path):
                return Unresolved(f"<from env {value}: not set>")
            ctx.add(ref_path, f"environment variable {value!r} is not set")
            return BAD
        return EnvStr(ctx.environ[value])
    try:
        return Path(value).expanduser().read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if ctx.may_leave_unset(path):
            return Unresolved(f"<from file {value}: {type(exc).__name__}>")
        ctx.add(ref_path, f"cannot read secret file {value!r}: {type(exc).__name__}")
        return BAD


def convert(
    tp: Any,
    value: Any,
    path: str,
    ctx: Problems,
    special: Mapping[str, Callable[[Any, str, Problems], Any]] | None = None,
) -> Any:
    """Convert one value to ``tp`` or record why not (and return BAD)."""
    if isinstance(value, Unresolved):
        return value  # a secret deliberately left unset: nothing to check
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, _parse_env(value), path, ctx, special)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _union(tp, value, path, ctx)
    if origin is tuple:
        return _tuple(typing.get_args(tp)[0], value, path, ctx)
    if origin is dict:
        return _dict(typing.get_args(tp), _parse_env(value), path, ctx)
    if isinstance(value, EnvStr) and tp is not str and tp is not Path:
        value = _parse_env(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _bounds(path, value, ctx)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                ctx.add(path, f"expected a finite number, got {show(value, path)}")
                return BAD
            return _bounds(path, number, ctx)
    elif tp is str:
        if isinstance(value, str):
            return _choice(path, str(value), ctx)
        if isinstance(value, int | float) and not isinstance(value, bool):
            ctx.add(path, f"expected a string, got {show(value, path)}; quote the value")
            return BAD
    elif tp is Path:
        if isinstance(value, str) and value:
            return Path(value).expanduser()
    else:  # pragma: no cover - a settings type this walker does not know
        ctx.add(path, f"unsupported settings type {tp!r}")
        return BAD
    ctx.add(path, f"expected {describe_type(tp)}, got {show(value, path)}")
    return BAD


def _parse_env(value: Any) -> Any:
    if not isinstance(value, EnvStr):
        return value
    import yaml

    try:
        return yaml.safe_load(str(value))
    except (yaml.YAMLError, RecursionError):
        return str(value)


def _union(tp: Any, value: Any, path: str, ctx: Problems) -> Any:
    args = typing.get_args(tp)
    options = [a for a in args if a is not type(None)]
    if type(None) in args and (value is None or (isinstance(value, EnvStr) and value == "")):
        return None
    if len(options) == 1:
        return convert(options[0], value, path, ctx)
    if isinstance(value, EnvStr):
        parsed = _parse_env(value)
        value = parsed if isinstance(parsed, int) and not isinstance(parsed, bool) else str(value)
    for option in options:
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return _bounds(path, value, ctx)
        if option is str and isinstance(value, str):
            return _choice(path, value, ctx)
    ctx.add(path, f"expected {describe_type(tp)}, got {show(value, path)}")
    return BAD


def _tuple(item: Any, value: Any, path: str, ctx: Problems) -> Any:
    if isinstance(value, EnvStr):
        text = str(value).strip()
        if text.startswith("["):
            value = _parse_env(value)
        else:
            value = [EnvStr(p.strip()) for p in text.split(",") if p.strip()]
    if not isinstance(value, list | tuple):
        ctx.add(path, f"expected {describe_type(tuple[item, ...])}, got {show(value, path)}")
        return BAD
    out = [convert(item, v, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
    return BAD if any(v is BAD for v in out) else tuple(out)


def _dict(args: tuple[Any, ...], value: Any, path: str, ctx: Problems) -> Any:
    if not isinstance(value, Mapping):
        ctx.add(path, f"expected a mapping of {_plural(args[1])}, got {show(value, path)}")
        return BAD
    out: dict[Any, Any] = {}
    for key, item in value.items():
        k = convert(args[0], key, f"{path}[{key!r}]", ctx)
        v = convert(args[1], item, f"{path}.{key}", ctx)
        if k is not BAD and v is not BAD:
            out[k] = v
    return out if len(out) == len(value) else BAD


def _bounds(path: str, number: Any, ctx: Problems) -> Any:
    name = path.rpartition(".")[2]
    if name == "namespace":
        if not -(2**31) <= number < 2**31:
            ctx.add(path, f"expected an integer that fits in int4 (±2^31), got {number}")
            return BAD
        return number
    positive = any(w in name for w in STRICTLY_POSITIVE_WORDS) or name in ("rate", "per")
    if name in AT_LEAST_ONE or name == "port":
        if number < 1:
            ctx.add(path, f"must be >= 1, got {number}")
            return BAD
    elif positive and number <= 0:
        unit = "" if name == "rate" else " seconds"  # a rate counts events
        ctx.add(path, f"must be > 0{unit}, got {number}")
        return BAD
    elif number < 0:
        ctx.add(path, f"must be >= 0, got {number}")
        return BAD
    if name in UPPER_BOUNDS:
        bound, inclusive = UPPER_BOUNDS[name]
        if number > bound or (number == bound and not inclusive):
            ctx.add(path, f"must be {'<=' if inclusive else '<'} {bound:g}, got {number}")
            return BAD
    return number


def _check_schedule(path: str, name: str, value: str, ctx: Problems) -> Any:
    """A loop's ``cron`` expression or ``tz`` zone, checked as the scheduler will read it."""
    try:
        if name == "cron":
            check_cron(value)
        else:
            zone_info(value)
    except ValueError as exc:
        ctx.add(path, str(exc))
        return BAD
    return value


def _check_dsn(path: str, value: str, ctx: Problems) -> Any:
    if not value:
        return value
    from psycopg import conninfo

    try:
        conninfo.conninfo_to_dict(value)
    except Exception:  # the message may quote the DSN (and its password): never show it
        ctx.add(path, "expected a libpq connection string or URI (value not shown: secret)")
        return BAD
    return value


def _choice(path: str, value: str, ctx: Problems) -> Any:
    name = path.rpartition(".")[2]
    if name in ("dsn", "lock_dsn"):
        return _check_dsn(path, value, ctx)
    if name in ("cron", "tz") and (value or name == "tz"):
        return _check_schedule(path, name, value, ctx)
    choices = CHOICES.get(path)
    if choices is None or value in choices:
        return value
    if path == "logging.level" and value.upper() in choices:
        return value.upper()
    hint = difflib.get_close_matches(value, choices, n=1)
    tip = f"; did you mean {hint[0]!r}?" if hint else ""
    ctx.add(path, f"expected one of {', '.join(choices)}, got {show(value, path)}{tip}")
    return BAD


def iter_fields(
    cls: type, prefix: str = "", instance: Any = None
) -> Iterator[tuple[str, Any, Any, bool]]:
    """Walk the model: ``(path, type, default, is_section)`` in declaration order."""
    instance = cls() if instance is None else instance
    for name, tp in field_types(cls).items():
        path = f"{prefix}.{name}" if prefix else name
        default = getattr(instance, name)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            yield path, tp, default, True
            yield from iter_fields(tp, path, default)
        else:
            yield path, tp, default, False
