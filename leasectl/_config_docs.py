"""Descriptions of every setting, and the two documents generated from the model.

Private to :mod:`leasectl.config`. ``config/leasectl.yaml`` and
``docs/operator/configuration.md`` are both rendered here from the settings dataclasses, so
they cannot drift from the code (tests compare the committed files with a fresh render).
A core setting's description comes from :data:`DESCRIPTIONS`, else from the comment next to
the field in its dataclass. The ``loops:`` section is the loops package's domain: its
descriptions (``DOCS``) and loop toggles (``TOGGLES``) live in that package's
``settings_docs`` module, which :mod:`leasectl.config` finds by name (:class:`LoopsDocs`), so
the core never imports ``loops``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from leasectl._config_schema import SECRET_FIELDS, field_types, iter_fields, type_name


@dataclass(frozen=True)
class LoopsDocs:
    """What a loops package says about its own settings (its ``settings_docs`` module)."""

    package: str = "leasectl.certs"
    #: key path under ``loops`` (settings and sections) -> description
    docs: Mapping[str, str] = field(default_factory=dict)
    #: key path of a ``LoopToggle`` (``enabled`` + ``interval``) -> the loop it switches
    toggles: Mapping[str, str] = field(default_factory=dict)


SECTIONS: dict[str, str] = {
    "database": "Where the work pool and the dedicated lock connection go.",
    "leases": "Timing of the campaign/heartbeat thread. See docs/safety.md for the inequality.",
    "migrations": "Schema migrations, serialized by the reserved lease `leasectl:migrations`.",
    "replica": "Identity of this process in the cluster.",
    "scheduler": "The loop scheduler.",
    "metrics": "The HTTP endpoint: /metrics, /healthz, /readyz.",
    "logging": "Log output.",
}

DESCRIPTIONS: dict[str, str] = {
    "database.dsn": (
        "libpq DSN of the database; empty: $LEASECTL_DSN, else the embedded server in data_dir. "
        "Secret: may be given as dsn_env / dsn_file"
    ),
    "database.lock_dsn": (
        "DSN for the lock connection only (must be direct or session-pooled); empty: same as dsn."
        " Secret: lock_dsn_env / lock_dsn_file"
    ),
    "database.data_dir": "data directory of the embedded PostgreSQL (used when no DSN is set); "
    "the default is looked for from the current folder up, as git finds .git",
    "database.pool_min_size": "connections kept open in the work pool (0: opened on demand, so "
    "an idle follower holds only its lock and watch connections)",
    "database.pool_max_size": "maximum connections of the work pool",
    "database.connect_timeout": "seconds to wait for a new connection",
    "database.tcp_keepalives_idle": (
        "server-side keepalive idle seconds on the lock connection; bounds D_srv"
    ),
    "database.tcp_keepalives_interval": "server-side keepalive probe interval (seconds)",
    "database.tcp_keepalives_count": (
        "server-side keepalive probes before the server drops a silent holder"
    ),
    "database.tcp_user_timeout_ms": (
        "server-side TCP user timeout of the lock connection (ms); bounds D_srv"
    ),
    "database.client_tcp_user_timeout_ms": (
        "client-side TCP user timeout: a heartbeat on a dead link fails after this instead of "
        "hanging"
    ),
    "database.work_idle_in_transaction_timeout_ms": (
        "idle_in_transaction_session_timeout of work connections, so a zombie's guarded "
        "transaction cannot block a new holder forever"
    ),
    "leases.namespace": (
        "advisory-lock namespace: a seed string (hashed) or an int4; replicas that should compete"
        " must share it"
    ),
    "leases.acquire_interval": (
        "seconds between fallback campaigns for leases not held (a release NOTIFY and a crash "
        "seen by the watch ring trigger one at once); also paces hung-holder eviction checks"
    ),
    "leases.acquire_jitter": "fraction by which each campaign interval is randomized (0 <= x < 1)",
    "leases.heartbeat_interval": "seconds between heartbeats; must be < lease_ttl",
    "leases.lease_ttl": (
        "a holder stops believing in a lease this long after the start of its last successful "
        "heartbeat"
    ),
    "leases.safety_margin": (
        "extra time the server must keep a silent holder's lock: lease_ttl + safety_margin <= D_srv"
    ),
    "leases.eviction_grace": (
        "a holder whose renewal is older than lease_ttl + eviction_grace is evicted; must be >= "
        "safety_margin"
    ),
    "leases.step_down_cooldown": (
        "after a step-down, seconds before the replica campaigns for that lease again"
    ),
    "leases.reconnect_max_backoff": "cap of the lock connection's reconnect backoff (seconds)",
    "leases.placement": (
        "spread: leases spread over the live replicas by rendezvous hashing (a replica that is "
        "not a lease's best candidate waits before trying it; better replicas get leases handed "
        "over at a tick boundary); pack: every replica tries at once, the first one wins"
    ),
    "leases.placement_step": (
        "spread: a candidate of rank r waits r * this many seconds after it saw a lease free "
        "before trying it (rank 0 tries at once)"
    ),
    "leases.rebalance_after": (
        "spread: a better-ranked replica must have been live this long before a holder hands it "
        "the lease (a replica that keeps restarting never pulls leases)"
    ),
    "leases.rebalance_cooldown": (
        "spread: a lease stays at least this long on the replica that acquired it before a "
        "rebalance moves it again (no ping-pong)"
    ),
    "leases.standby": (
        "direct: every replica keeps a lock session (and a watch session) to PostgreSQL; "
        "pooled: only holders, placement's choices and each lease's heir do, every other replica "
        "polls once per heartbeat_interval through database.dsn, which may be a transaction-mode "
        "pooler (hundreds of replicas; crash takeover within heir_interval, no watch ring; "
        "needs placement: spread)"
    ),
    "leases.heir_interval": (
        "pooled: how often a replica with a lock session campaigns (the heir of a lease finds a "
        "crashed holder's lock free within this, or sooner when a standby's poll sees the crash)"
    ),
    "leases.standby_after": (
        "pooled: a replica with a lock session that holds nothing and is nobody's heir for this "
        "long closes it and goes back to polling through the pooler"
    ),
    "leases.loops": (
        "per leased loop: preferred_holder (a replica id or label that ranks first) and "
        "requires_labels (only replicas with all these labels campaign for it); overrides the "
        "loop's own declaration, e.g. {digest: {requires_labels: [smtp]}}"
    ),
    "migrations.lock_timeout": "seconds to wait for another replica's migration run",
    "migrations.directory": "directory of NNNN_*.up.sql files; null: the packaged migrations",
    "replica.id": "replica id shown in status and logs; empty: host-pid-random",
    "replica.may_lead": "false: never campaign for leases (web-only nodes)",
    "replica.labels": (
        "labels of this replica (e.g. zone-a, has-hsm); loops' requires_labels and "
        "preferred_holder match them"
    ),
    "replica.on_wedged": (
        "a tick running past its timeout + scheduler.wedge_grace: release (give up the loop's "
        "lease, report it, /healthz unhealthy) or exit (stop with exit code 4 for the supervisor "
        "to restart)"
    ),
    "scheduler.shutdown_grace": (
        "on SIGTERM, seconds to let running ticks finish before leases are released"
    ),
    "scheduler.loops_package": (
        "Python package whose settings the loops: section holds (its .registry declares them)"
    ),
    "scheduler.only": "run only these loops (names); empty: every enabled loop",
    "scheduler.ledger_retention": (
        "seconds of run history kept in the tick ledger (leasectl_ticks); older rows are "
        "deleted by the built-in everywhere loop ledger_retention (a loop's latest done slot "
        "is always kept)"
    ),
    "scheduler.error_backoff_initial": "first delay after a failed tick (seconds)",
    "scheduler.error_backoff_max": "cap of the failed-tick backoff (seconds)",
    "scheduler.wedge_grace": (
        "seconds past a loop's timeout after which a still-running tick is wedged (it ignored "
        "ctx.check() and cancellation)"
    ),
    "scheduler.control_poll_interval": (
        "seconds between re-reads of the loop pauses and triggers (leasectl loop ...); a "
        "NOTIFY makes replicas with a lock session read them at once, this bounds the rest"
    ),
    "metrics.listen": (
        "HOST:PORT of /metrics, /healthz, /readyz and the status page (/, /status.json); keep "
        "it on loopback or behind an authenticating proxy; empty disables the server"
    ),
    "metrics.enabled": "record and serve metrics",
    "logging.format": "text (human) or json (one object per line)",
    "limits": "cluster-wide rate limits shared by every replica (kept in PostgreSQL): "
    "name → {rate, per, burst, per_scope} allows rate events per `per` seconds, burst at once; "
    "per_scope: true gives each scope (recipient domain, host, region) its own bucket; used by "
    "ctx.limit(name, scope); the shipped loops use smtp, webhook and aws; empty: no limits",
    "logging.level": "DEBUG, INFO, WARNING, ERROR or CRITICAL",
}

_FIELD = re.compile(r"^\s+(?P<name>[a-z_][a-z0-9_]*)\s*:[^#]*(?:#\s*(?P<comment>.*))?$")


@cache
def _source_comments(cls: type) -> dict[str, str]:
    """Comments on or right above each field in the dataclass source."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        m = _FIELD.match(line)
        if m and m.group("name") in field_types(cls):
            parts = above + ([m.group("comment").strip()] if m.group("comment") else [])
            if parts:
                out[m.group("name")] = " ".join(parts)
        above = []
    return out


def describe(path: str, owner: type | None, loops_docs: LoopsDocs | None = None) -> str:
    ld = loops_docs or LoopsDocs()
    if path in DESCRIPTIONS:
        return DESCRIPTIONS[path]
    if path in SECTIONS:
        return SECTIONS[path]
    if path in ld.docs:
        return ld.docs[path]
    parent, _, name = path.rpartition(".")
    if parent in ld.toggles:
        loop = ld.toggles[parent]
        return {
            "enabled": f"run the {loop} loop",
            "cron": (
                f"cron expression for {loop} instead of interval (e.g. '0 2 * * *'); "
                "empty: every interval seconds"
            ),
            "tz": "IANA time zone the cron expression is read in (e.g. Europe/Berlin)",
        }.get(name, f"seconds between {loop} ticks")
    if path in ld.toggles:
        return f"the {ld.toggles[path]} loop"
    if path == "loops":
        return f"Settings of the loops package `{ld.package}` (its own settings object)."
    if owner is not None:
        return _source_comments(owner).get(name, "")
    return ""


def model(
    settings_cls: type, loops_cls: type, loops_docs: LoopsDocs | None = None
) -> Iterator[tuple[str, Any, Any, bool, str]]:
    """``(path, type, default, is_section, description)`` for every setting and section."""
    owners: dict[str, type] = {"": settings_cls, "loops": loops_cls}
    for path, tp, default, section in _walk(settings_cls, loops_cls):
        if section:
            owners[path] = tp
        owner = owners.get(path.rpartition(".")[0])
        yield path, tp, default, section, describe(path, owner, loops_docs)


def _walk(settings_cls: type, loops_cls: type) -> Iterator[tuple[str, Any, Any, bool]]:
    for item in iter_fields(settings_cls):
        if item[0] == "loops" or item[0].startswith("loops."):
            continue
        yield item
    yield "loops", loops_cls, loops_cls(), True
    yield from iter_fields(loops_cls, "loops")


def _yaml_value(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def env_name(path: str) -> str:
    return "LEASECTL_" + "__".join(p.upper() for p in path.split("."))


def render_yaml(settings_cls: type, loops_cls: type, loops_docs: LoopsDocs | None = None) -> str:
    """The packaged ``leasectl.yaml``: every setting with its default and a comment."""
    out = [
        "# leasectl configuration: every setting with its default value.",
        "#",
        "# Generated from the settings model by `python -m leasectl.config --yaml`; do not edit",
        "# by hand (a test compares this file with the model). Copy it and change what you need.",
        "# Load order: --config FILE, else $LEASECTL_CONFIG, else this file. Any key can be",
        "# overridden by LEASECTL_<SECTION>__<KEY> (e.g. LEASECTL_LEASES__LEASE_TTL=4, or",
        "# LEASECTL_LOOPS__NOTIFICATIONS__SMTP__HOST=smtp.example.com); LEASECTL_DSN sets",
        "# database.dsn. Secrets (dsn, lock_dsn, password, hmac_key) may instead be read from",
        "# an environment variable (<key>_env: NAME) or a file (<key>_file: PATH); they are",
        "# never printed (`leasectl config show` redacts them).",
    ]
    for path, _tp, default, section, text in model(settings_cls, loops_cls, loops_docs):
        depth = path.count(".")
        indent = "  " * depth
        name = path.rpartition(".")[2]
        if section:
            if depth == 0:
                out.append("")
            if text:
                out.extend(indent + "# " + line for line in _wrap(text, 96 - len(indent)))
            out.append(f"{indent}{name}:")
            continue
        if text:
            out.extend(indent + "# " + line for line in _wrap(text, 96 - len(indent)))
        out.append(f"{indent}{name}: {_yaml_value(default)}")
        if name in SECRET_FIELDS:
            out.append(f"{indent}# {name}_env: NAME_OF_ENV_VAR")
            out.append(f"{indent}# {name}_file: /run/secrets/{name}")
    return "\n".join(out) + "\n"


def render_reference(
    settings_cls: type, loops_cls: type, loops_docs: LoopsDocs | None = None
) -> str:
    """``docs/operator/configuration.md``: one table per top-level section."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m leasectl.config --reference`; do not edit by hand.",
        "     tests/unit/test_config_docs.py fails when this file and the model differ. -->",
        "",
        "leasectl reads one YAML file: `--config FILE`, else `$LEASECTL_CONFIG`, else the",
        "packaged default (`config/leasectl.yaml`, every setting with its default). Then",
        "environment variables override single keys: `LEASECTL_<SECTION>__<KEY>` with `__`",
        "between levels (values are parsed as YAML scalars; lists may be comma-separated), and",
        "`LEASECTL_DSN` sets `database.dsn`. A variable naming a whole section",
        "(`LEASECTL_LIMITS=...`) is an error, not ignored. Command-line flags (`--dsn`,",
        "`--replica-id`, ...) win over both.",
        "",
        "The whole file is validated before anything starts. Every problem is reported at once,",
        "each with its key path, the bad value, what was expected and where it was set (file",
        "and line, or environment variable). Unknown keys are errors with a *did you mean* hint.",
        "Cross-field rules: `leases.heartbeat_interval < leases.lease_ttl`,",
        "`leases.eviction_grace >= leases.safety_margin`,",
        "`database.pool_min_size <= database.pool_max_size`; intervals, TTLs and timeouts must",
        "be > 0 and other numbers >= 0.",
        "",
        "**Secrets** (`dsn`, `lock_dsn`, `password`, `hmac_key`) may be given inline, or as",
        "`<key>_env: NAME` (read from that environment variable) or `<key>_file: PATH` (file",
        "contents, trailing newline stripped). `leasectl config show` prints the effective",
        "configuration with secrets redacted (the password inside a DSN only; URLs without",
        "credentials and query string).",
        "",
    ]
    rows: list[str] = []
    for path, tp, default, section, text in model(settings_cls, loops_cls, loops_docs):
        if section:
            if "." not in path:
                if rows:
                    out.extend(rows)
                    out.append("")
                    rows = []
                out += [f"## `{path}`", "", text, ""] if text else [f"## `{path}`", ""]
                rows = ["| key | type | default | description |", "|---|---|---|---|"]
            continue
        if "." not in path:  # a top-level map (limits): a section of its own, per entry's keys
            out.extend([*rows, ""] if rows else [])
            rows = []
            out += _map_section(path, tp, text)
            continue
        shown = _yaml_value(default).replace("|", "\\|")
        tname = type_name(tp).replace("|", "\\|")
        rows.append(
            f"| `{path}` | {tname} | `{shown}` | {text.replace('|', '/')} (`{env_name(path)}`) |"
            if text
            else f"| `{path}` | {tname} | `{shown}` | `{env_name(path)}` |"
        )
    out.extend(rows)
    return "\n".join(out) + "\n"


#: The keys of one ``limits.<name>`` entry (LimitSettings), for the reference.
MAP_ENTRY_DOCS: dict[str, str] = {
    "rate": "events allowed per `per` seconds (a count, > 0)",
    "per": "the period the rate counts over, in seconds (> 0)",
    "burst": "events allowed at once: the bucket's size (>= 1)",
    "per_scope": "true: each scope (ctx.limit(name, scope)) gets its own bucket with these numbers",
}


def _map_section(path: str, tp: Any, text: str) -> list[str]:
    """``## `limits```: what the map is for, then the keys of one entry."""
    entry = typing.get_args(tp)[1]
    rows = [f"## `{path}`", "", text[:1].upper() + text[1:] + ".", ""]
    rows += [
        f"Each entry is `{path}.<name>: {{...}}` in the file; from the environment, one key "
        f"at a time: `LEASECTL_{path.upper()}__<NAME>__RATE` and so on.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(entry):
        doc = MAP_ENTRY_DOCS.get(f.name, "")
        rows.append(
            f"| `{path}.<name>.{f.name}` | {type_name(f.type)} | `{_yaml_value(f.default)}` "
            f"| {doc} |"
        )
    return [*rows, ""]


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=max(40, width)) or [""]
