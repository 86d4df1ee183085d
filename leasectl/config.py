"""Configuration: one YAML file, environment overrides, validated into typed :class:`Settings`.

Sources, lowest precedence first:

1. the file: ``path`` (``--config``), else ``$LEASECTL_CONFIG``, else the packaged default
   ``leasectl.default_config/leasectl.yaml`` (every setting with its default);
2. ``LEASECTL_<SECTION>__<KEY>`` environment variables, one key each, ``__`` between levels
   (``LEASECTL_LOOPS__NOTIFICATIONS__SMTP__HOST``); then plain ``LEASECTL_DSN``;
3. ``overrides`` from the command line, keyed by dotted path (``{"database.dsn": ...}``).

Everything is validated before anything starts, and every problem is reported at once in one
:class:`ConfigError`, each naming the key path, the bad value, what was expected and where the
value was set. Secrets (``dsn``, ``lock_dsn``, ``password``, ``hmac_key``) may come from
``<key>_env: NAME`` or ``<key>_file: PATH`` and are redacted by :func:`dump`.

``python -m leasectl.config --reference`` / ``--yaml`` print the generated documents.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import sys
from collections.abc import Collection, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from leasectl import _config_docs, extras
from leasectl._config_schema import (
    BAD,
    REDACTED,
    SECRET_FIELDS,
    EnvStr,
    Problems,
    Unresolved,
    build,
    field_types,
    show,
)
from leasectl.errors import ConfigError
from leasectl.settings import SchedulerSettings, Settings

ENV_PREFIX = "LEASECTL_"
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
PACKAGED = "packaged default leasectl.yaml"
#: Plain variables that set one key (the CLI reads them as flag defaults too).
ENV_ALIASES = {"LEASECTL_DSN": "database.dsn", "LEASECTL_LOCK_DSN": "database.lock_dsn"}


def load_settings(
    path: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    loops: bool | Collection[str] = True,
    unset_secrets: str | None = None,
) -> Settings:
    """Load, merge and validate the configuration.

    :param path: the YAML file (``--config``); None: ``$LEASECTL_CONFIG`` or the packaged one.
    :param overrides: dotted key path → value, applied last (command-line flags).
    :param loops: False skips the ``loops:`` section (``settings.loops`` stays None), for
        commands that only read lease state and must not need the loops' secrets. A
        collection of package names: read it only when ``scheduler.loops_package`` is one of
        them (an App reads it only for a package it includes, and imports no other).
    :param unset_secrets: a key-path prefix (``"loops"``; ``""`` for every section) under
        which a secret whose ``_env`` variable is not set (or ``_file`` unreadable) is left
        :class:`~leasectl._config_schema.Unresolved` instead of being a problem: for
        commands that validate the file but never use those secrets (``status`` reads which
        loops are enabled; ``config show`` prints where each secret would come from).
    :raises ConfigError: listing every problem found.
    """
    return load(path, overrides, environ=os.environ, loops=loops, unset_secrets=unset_secrets)


def load(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    loops: bool | Collection[str] = True,
    unset_secrets: str | None = None,
) -> Settings:
    """:func:`load_settings` with an explicit environment (tests)."""
    return load_traced(
        path, overrides, environ=environ, loops=loops, unset_secrets=unset_secrets
    ).settings


@dataclasses.dataclass(frozen=True)
class Loaded:
    """Settings and where each key was set (``config check`` locates late problems)."""

    settings: Settings
    source: str
    origins: Mapping[str, str]

    def origin(self, path: str) -> str:
        """``file:line`` (or ``env NAME``, ``command line``) of ``path`` or its nearest parent."""
        return Problems(self.origins, self.source).origin(path)


def load_traced(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    loops: bool | Collection[str] = True,
    unset_secrets: str | None = None,
) -> Loaded:
    """:func:`load` that also returns where each key was set."""
    env = dict(os.environ if environ is None else environ)
    if path is None and env.get("LEASECTL_CONFIG"):
        path = env["LEASECTL_CONFIG"]
    if path is None:
        source = PACKAGED
        text = resources.files("leasectl.default_config").joinpath("leasectl.yaml").read_text()
    else:
        source = str(path)
        text = _read(Path(path))
    data, lines = parse_yaml(text, source)
    origins = {key: f"{source}:{line}" for key, line in lines.items()}
    problems: list[str] = []
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and "__" in name[len(ENV_PREFIX) :]:
            key = ".".join(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
            _set(data, key, EnvStr(value), f"env {name}", origins, problems)
        elif name.startswith(ENV_PREFIX) and isinstance(data, dict):
            section = name[len(ENV_PREFIX) :].lower()
            if section in data and name not in ENV_ALIASES:
                # ``LEASECTL_LIMITS='{...}'`` would otherwise be ignored without a word.
                problems.append(
                    f"{section}: one variable cannot set a whole section; set one key per "
                    f"variable, e.g. {name}__<KEY>=<value> (env {name})"
                )
    for name, key in ENV_ALIASES.items():
        if env.get(name):
            _set(data, key, EnvStr(env[name]), f"env {name}", origins, problems)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(data, key, value, "command line", origins, problems)
    if not isinstance(loops, bool):
        loops = _loops_package(data) in loops
    elif loops and _not_installed(_loops_package(data)) and not _set_by_user("loops", origins):
        # The shipped loops without their extra, and only the packaged defaults for them:
        # nothing to validate; including them says which extra to install.
        loops = False
    if not loops and isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "loops"}
        problems = [p for p in problems if not p.startswith("loops.")]
    settings = from_mapping(
        data,
        source,
        origins=origins,
        environ=env,
        problems=problems,
        loops=loops,
        unset_secrets=unset_secrets,
    )
    return Loaded(settings, source, origins)


def _not_installed(package: str) -> bool:
    """A package that ships with leasectl but whose extra is not installed."""
    extra = extras.PACKAGES.get(package)
    return extra is not None and bool(extras.missing(extra))


def _set_by_user(prefix: str, origins: Mapping[str, str]) -> bool:
    """Whether a key under ``prefix`` comes from anywhere but the packaged defaults."""
    return any(
        (key == prefix or key.startswith(prefix + ".")) and not origin.startswith(PACKAGED)
        for key, origin in origins.items()
    )


def _loops_package(data: Any) -> str:
    """``scheduler.loops_package`` as given (before validation), else its default."""
    scheduler = data.get("scheduler") if isinstance(data, Mapping) else None
    candidate = scheduler.get("loops_package") if isinstance(scheduler, Mapping) else None
    if isinstance(candidate, str) and candidate:
        return candidate
    return SchedulerSettings().loops_package


_WHERE = re.compile(r"\(([^()]*)\)$")


def blame(problems: Sequence[str], source: str) -> str:
    """What a :class:`ConfigError`'s header names: the file, unless every problem was set
    elsewhere (an environment variable, the command line) - then those, not a file the
    operator never touched (e.g. the packaged default)."""
    wheres = []
    for p in problems:
        m = _WHERE.search(p)
        wheres.append(m.group(1) if m else source)
    if not wheres or any(not (w.startswith("env ") or w == "command line") for w in wheres):
        return source
    names = sorted({w.removeprefix("env ") for w in wheres})
    return ", ".join(
        "the command line" if n == "command line" else f"environment variable {n}" for n in names
    )


def from_mapping(
    data: Any,
    source: str = "<data>",
    *,
    origins: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    problems: list[str] | None = None,
    loops: bool = True,
    unset_secrets: str | None = None,
) -> Settings:
    """Validate already-parsed data (a mapping) into :class:`Settings`."""
    ctx = Problems(origins or {}, source, list(problems or []), unset_secrets=unset_secrets)
    if environ is not None:
        ctx.environ = environ
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        ctx.add("", f"expected a mapping of sections at the top level, got {show(data)}")
        raise ConfigError(ctx.items, blame(ctx.items, source))
    loops_data = data.get("loops")
    core = {k: v for k, v in data.items() if k != "loops"}
    settings = build(Settings, core, "", ctx)
    package = settings.scheduler.loops_package if settings is not BAD else _loops_package(core)
    loops_obj: Any = None
    if loops:
        loops_cls = loops_settings_class(package, ctx)
        loops_obj = build(loops_cls, loops_data, "loops", ctx) if loops_cls is not None else BAD
    _cross_checks(settings if settings is not BAD else _sections(core, ctx), ctx)
    if ctx.items:
        raise ConfigError(ctx.items, blame(ctx.items, source))
    result: Settings = dataclasses.replace(settings, loops=loops_obj)
    return result


def loops_settings_class(package: str, ctx: Problems | None = None) -> type | None:
    """The loops package's ``registry.SETTINGS_CLASS``."""
    try:
        registry = importlib.import_module(package + ".registry")
        cls = registry.SETTINGS_CLASS
    except Exception as exc:  # any import failure is a configuration problem here
        if ctx is None:
            raise
        ctx.add(
            "scheduler.loops_package",
            f"cannot import {package}.registry.SETTINGS_CLASS ({type(exc).__name__}: {exc}); "
            "expected an importable loops package",
        )
        return None
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        if ctx is not None:
            ctx.add(
                "scheduler.loops_package", f"{package}.registry.SETTINGS_CLASS is not a dataclass"
            )
        return None
    return cls


def _sections(core: Mapping[str, Any], ctx: Problems) -> Settings:
    """Settings from the sections that are valid on their own, so cross-field rules still run
    (and get reported together with the other problems) when an unrelated key is wrong."""
    scratch = Problems(ctx.origins, ctx.default_origin, environ=ctx.environ)
    parts: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name == "loops" or not isinstance(core.get(f.name, {}), Mapping):
            continue
        cls = type(getattr(Settings(), f.name))
        if not dataclasses.is_dataclass(cls):
            continue  # a mapping of sections (e.g. named entries): validated by build() only
        raw = core.get(f.name) or {}
        known = {
            k
            for k in raw
            if isinstance(k, str) and k.split("_env")[0].split("_file")[0] in field_types(cls)
        }
        built = build(cls, {k: raw[k] for k in known}, f.name, scratch)
        if built is not BAD:
            parts[f.name] = built
    return Settings(**parts)


def _cross_checks(s: Settings, ctx: Problems) -> None:
    ls = s.leases
    if not ls.heartbeat_interval < ls.lease_ttl:
        ctx.add(
            "leases.heartbeat_interval",
            f"must be < leases.lease_ttl ({ls.lease_ttl:g}), got {ls.heartbeat_interval:g}: "
            "a holder would self-fence between two heartbeats",
        )
    if not ls.eviction_grace >= ls.safety_margin:
        ctx.add(
            "leases.eviction_grace",
            f"must be >= leases.safety_margin ({ls.safety_margin:g}), got {ls.eviction_grace:g}: "
            "a silent holder could be evicted while it still believes in its lease",
        )
    if ls.standby == "pooled" and ls.placement != "spread":
        ctx.add(
            "leases.standby",
            "pooled needs leases.placement: spread (it keeps lock sessions only for placement's "
            f"choices and heirs; with {ls.placement!r} every replica races for every lease)",
        )
    if ls.standby == "pooled" and not ls.standby_after > ls.heartbeat_interval:
        ctx.add(
            "leases.standby_after",
            f"must be > leases.heartbeat_interval ({ls.heartbeat_interval:g}), got "
            f"{ls.standby_after:g}: a replica would drop its lock session between two looks",
        )
    db = s.database
    if db.pool_min_size > db.pool_max_size:
        ctx.add(
            "database.pool_min_size",
            f"must be <= database.pool_max_size ({db.pool_max_size}), got {db.pool_min_size}",
        )
    listen = s.metrics.listen
    if listen:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            ctx.add("metrics.listen", f"expected HOST:PORT or empty, got {listen!r}")


def _read(path: Path) -> str:
    try:
        return path.expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["file not found"], str(path)) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError([f"cannot read: {type(exc).__name__}: {exc}"], str(path)) from None


def parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """Parse ``text``; return the data and the line of each key path (best effort)."""
    data, lines = _parse_cached(text, source)
    return (_copy_tree(data, 0) if isinstance(data, dict) else data), dict(lines)


@lru_cache(maxsize=8)
def _parse_cached(text: str, source: str) -> tuple[Any, dict[str, int]]:
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"not valid YAML{where}: {problem}"], source) from None
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise ConfigError([f"not valid YAML: {type(exc).__name__}"], source) from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    try:
        _node_lines(node, "", lines, 0)
    except Exception:  # noqa: S110 - line numbers are a courtesy; the data is authoritative
        pass
    return ({} if data is None else data), lines


def _copy_tree(value: Any, depth: int) -> Any:
    """Copy mappings so overrides never mutate shared YAML aliases; cut absurd depth."""
    if depth > 50:
        return value
    if isinstance(value, dict):
        return {k: _copy_tree(v, depth + 1) for k, v in value.items()}
    return value


def _node_lines(node: Any, prefix: str, out: dict[str, int], depth: int) -> None:
    if depth > 50 or not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            out.setdefault(path, key_node.start_mark.line + 1)
            _node_lines(value_node, path, out, depth + 1)


def _set(
    data: dict[str, Any],
    key: str,
    value: Any,
    origin: str,
    origins: dict[str, str],
    problems: list[str],
) -> None:
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
            # A mapping the file never had was made by this setting: a problem found with it
            # (``LEASECTL_LEASE__LEASE_TTL``: unknown key 'lease') is blamed on the variable.
            origins.setdefault(".".join(parts[: i + 1]), origin)
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            problems.append(f"{key}: cannot set it because {where} is not a mapping ({origin})")
            return
        node = child
    node[parts[-1]] = value
    origins[key] = origin


# -- output --------------------------------------------------------------------------------


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced (the rest helps debugging)."""
    if not dsn:
        return dsn
    from psycopg import conninfo

    try:
        params = conninfo.conninfo_to_dict(dsn)
    except Exception:
        return REDACTED
    if "password" not in params:
        return dsn
    params["password"] = "***"  # noqa: S105 - the redaction mark, not a password
    return conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def redact_url(url: str) -> str:
    """A URL without credentials or query string (webhook URLs often carry tokens there)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        p = urlsplit(url)
        host = p.hostname or ""
        netloc = ("***@" if p.username or p.password else "") + host
        netloc += f":{p.port}" if p.port else ""
    except ValueError:
        return REDACTED
    return urlunsplit((p.scheme, netloc, p.path, "***" if p.query else "", ""))


def dump(settings: Settings, *, redact: bool = True) -> dict[str, Any]:
    """Settings as plain data (for YAML/JSON), secrets redacted unless ``redact=False``."""
    return {
        f.name: _plain(getattr(settings, f.name), f.name, redact)
        for f in dataclasses.fields(settings)
    }


def _plain(value: Any, name: str, redact: bool) -> Any:
    if isinstance(value, Unresolved):
        return str(value)  # where it would come from; there is no value to hide
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name), f.name, redact)
            for f in dataclasses.fields(value)
        }
    if redact and name in SECRET_FIELDS and isinstance(value, str) and value:
        return redact_dsn(value) if name.endswith("dsn") else REDACTED
    if redact and (name == "url" or name.endswith("_url")) and isinstance(value, str):
        return redact_url(value)
    if isinstance(value, tuple | list):
        return [_plain(v, "", redact) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, "", redact) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, EnvStr):
        return str(value)
    return value


def to_yaml(settings: Settings, *, redact: bool = True) -> str:
    return yaml.safe_dump(dump(settings, redact=redact), sort_keys=False, width=100)


def _loops_model() -> tuple[type, _config_docs.LoopsDocs]:
    """The configured loops package's settings class and its own descriptions.

    Found by name through ``scheduler.loops_package`` (``leasectl.certs`` by default): the settings
    class in ``<package>.registry``, the descriptions in ``<package>.settings_docs`` (``DOCS``
    and ``TOGGLES``; optional). The core never imports the loops package statically.
    """
    package = Settings().scheduler.loops_package
    cls = loops_settings_class(package)
    assert cls is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
    try:
        module = importlib.import_module(package + ".settings_docs")
    except ModuleNotFoundError as exc:
        if exc.name != package + ".settings_docs":
            raise
        return cls, _config_docs.LoopsDocs(package)
    docs = _config_docs.LoopsDocs(
        package, dict(getattr(module, "DOCS", {})), dict(getattr(module, "TOGGLES", {}))
    )
    return cls, docs


def reference() -> str:
    """The generated ``docs/operator/configuration.md``."""
    return _config_docs.render_reference(Settings, *_loops_model())


def default_yaml() -> str:
    """The generated ``config/leasectl.yaml``."""
    return _config_docs.render_yaml(Settings, *_loops_model())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leasectl.config")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--reference", action="store_true", help="print configuration.md")
    group.add_argument("--yaml", action="store_true", help="print the packaged leasectl.yaml")
    group.add_argument("--write", action="store_true", help="rewrite both files in the repo")
    args = parser.parse_args(argv)
    if args.reference:
        sys.stdout.write(reference())
    elif args.yaml:
        sys.stdout.write(default_yaml())
    else:
        root = Path(__file__).resolve().parents[1]
        (root / "docs/operator/configuration.md").write_text(reference())
        (root / "config/leasectl.yaml").write_text(default_yaml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
