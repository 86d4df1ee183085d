"""Scale of the lease core on the embedded PostgreSQL: many leases, many replicas.

(a) leases   One :class:`leasectl.LeaseManager` wanting 1, 10, 100, 1,000 leases: time from
             ``start()`` until all are held (one campaign round trip takes every free lock,
             one bumps every epoch), and the heartbeat round-trip time while holding them
             (one statement that checks ``pg_locks`` and renews every held lease).
(b) replicas 1, 10, 30 ``leasectl run`` processes (the three leased notification/CRL loops at
             their default intervals, nothing to do: idle). Over a quiet window: statements
             per second at the server (``pg_stat_statements`` calls, and transactions from
             ``pg_stat_database``) divided by the number of replicas, CPU per replica
             (utime + stime from ``/proc``), server connections per replica (by
             ``application_name``: lock, watch, work pool), then crash takeover: SIGKILL the
             holder of ``notification_send`` ``--kills`` times, time to the next
             ``lease_acquired`` (needs at least 2 replicas: a lone replica is not replaced).
(c) pooled   10, 100, 300 light replica processes (``tests/replica_proc.py``: one real
             :class:`LeaseManager` per process, one process per replica, 5 leases), in both
             ``leases.standby`` modes side by side: ``direct`` (every replica has its lock and
             watch sessions) and ``pooled`` (the work DSN is a real PgBouncer in transaction
             mode; only holders, choices and heirs keep a lock session). Per count and mode:
             direct server connections (lock, watch), total server connections (PgBouncer's
             included), statements/s per replica, server CPU (every postgres process) and
             PgBouncer's, client CPU per replica, then ``--kills`` crash takeovers (SIGKILL
             the holder of the first lease, time to the next holder's ``acquired``; the killed
             replica is replaced by a new one and the cluster given 3 s before the next kill).

Goals (issues 5 and 11): 1,000 leases heartbeat < 10 ms; idle <= 4 statements/s and <= 0.3 %
CPU per replica; crash takeover p99 <= 1 s at 30 replicas. Issue 13: at 300 replicas and 5
leases, pooled mode keeps <= 2 x 5 + a small constant direct lock sessions, crash takeover p99
<= 1 s, <= 4 statements/s per replica. Usage::

    .venv/bin/python bench/scale.py [--replicas 1,10,30] [--leases 1,10,100,1000] [--kills 20]
    .venv/bin/python bench/scale.py --leases "" --replicas "" --pooled 10,100,300 --kills 20
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg import conninfo  # noqa: E402

from leasectl.embedded import EmbeddedPostgres  # noqa: E402
from leasectl.lease_manager import LeaseManager  # noqa: E402
from leasectl.leases import LeaseEvent  # noqa: E402
from leasectl.migrate import migrate  # noqa: E402
from leasectl.settings import CoreSettings  # noqa: E402
from leasectl.tools.drill.cluster import Cluster, LogLine  # noqa: E402
from leasectl.tools.drill.pooler import PgBouncer  # noqa: E402
from leasectl.tools.drill.stats import percentile  # noqa: E402
from tests.replica_proc import ReplicaProcess  # noqa: E402

LEASED = ("notification_send", "notification_retry", "crl_generation")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def new_db(server_dsn: str, name: str) -> str:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    params: dict[str, Any] = dict(conninfo.conninfo_to_dict(server_dsn))
    params["dbname"] = name
    dsn = conninfo.make_conninfo(**params)
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return dsn


def bench_leases(dsn: str, n: int) -> dict[str, Any]:
    names = [f"scale-{n}-{i}" for i in range(n)]
    beats: list[float] = []

    def on_event(ev: LeaseEvent) -> None:
        if ev.kind == "heartbeat":
            beats.append(ev.seconds)

    mgr = LeaseManager(f"scale-{n}", names, CoreSettings(), dsn=dsn)
    mgr.add_listener(on_event)
    t0 = time.monotonic()
    mgr.start()
    deadline = t0 + 60
    while len(mgr.held()) < n and time.monotonic() < deadline:
        time.sleep(0.001)
    acquire_s = time.monotonic() - t0
    held = len(mgr.held())
    beats.clear()
    time.sleep(6.5)  # about six heartbeats while holding everything
    mgr.stop()
    return {
        "leases": n,
        "held": held,
        "acquire_all_s": acquire_s,
        "heartbeat_p50_s": statistics.median(beats) if beats else None,
        "heartbeat_max_s": max(beats) if beats else None,
        "heartbeats": len(beats),
    }


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def _counters(dsn: str) -> tuple[float, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        calls = conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()"
        ).fetchone()
        xacts = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
    assert calls is not None and xacts is not None
    return float(calls[0]), float(xacts[0])


def _connections(dsn: str) -> dict[str, int]:
    """Server connections of the replicas, by kind (from their application_name)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT CASE WHEN application_name LIKE 'leasectl-work/%%' THEN 'pool'"
            " WHEN application_name LIKE 'leasectl/%%/watch' THEN 'watch'"
            " WHEN application_name LIKE 'leasectl/%%' THEN 'lock' ELSE 'other' END, count(*)"
            " FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() GROUP BY 1"
        ).fetchall()
    return {str(k): int(v) for k, v in rows}


def bench_replicas(server: EmbeddedPostgres, n: int, kills: int, work: Path) -> dict[str, Any]:
    dsn = new_db(server.ensure_running().dsn(), f"scale_r{n}")
    config = work / "scale.yaml"
    config.write_text("scheduler: {shutdown_grace: 5}\nlogging: {format: json, level: INFO}\n")
    cluster = Cluster(
        prefix=f"s{n}",
        config_for=lambda slot: config,
        dsn_for=lambda slot: dsn,
        namespaces=None,
        loops=LEASED,
        workdir=work,
    )
    try:
        for slot in range(n):
            cluster.start(slot)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            up = {ln.replica for ln in cluster.snapshot() if ln.action == "daemon_started"}
            if len(up) >= n and "notification_send" in cluster.holders():
                break
            time.sleep(0.2)
        time.sleep(5.0)  # let start-up traffic (migrations check, first ticks) pass
        window = 20.0
        calls0, xacts0 = _counters(dsn)
        cpu0 = {r.replica_id: _cpu_ticks(r.pid) for r in cluster.replicas.values()}
        time.sleep(window)
        calls1, xacts1 = _counters(dsn)
        conns = _connections(dsn)
        cpu = [
            (_cpu_ticks(r.pid) - cpu0[r.replica_id]) / CLK_TCK / window
            for r in cluster.replicas.values()
        ]
        takeovers: list[float] = []
        for _ in range(kills if n > 1 else 0):
            holder = cluster.holders().get("notification_send")
            if holder is None:
                time.sleep(0.5)
                continue
            rep = cluster.replicas[holder[0]]
            t0 = time.time()
            rep.signal(signal.SIGKILL)

            def took(line: LogLine, old: int | None = holder[1]) -> bool:
                return (
                    line.action == "lease_acquired"
                    and line.lease == "notification_send"
                    and (line.epoch or 0) > (old or 0)
                )

            got = cluster.wait_line(took, since=t0, timeout=15.0)
            if got is not None:
                takeovers.append(got.ts - t0)
            rep.proc.wait(10)
            cluster.start(rep.slot)
            time.sleep(1.5)
        return {
            "replicas": n,
            "statements_per_s_per_replica": (calls1 - calls0) / window / n,
            "transactions_per_s_per_replica": (xacts1 - xacts0) / window / n,
            "cpu_per_replica_pct": 100 * statistics.mean(cpu) if cpu else None,
            "cpu_per_replica_max_pct": 100 * max(cpu) if cpu else None,
            "connections_per_replica": {k: v / n for k, v in conns.items()},
            "kills": len(takeovers),
            "takeover_p50_s": percentile(takeovers, 50),
            "takeover_p99_s": percentile(takeovers, 99),
            "takeover_max_s": max(takeovers) if takeovers else None,
        }
    finally:
        cluster.stop_all()


POOLED_LEASES = [f"pooled-{i}" for i in range(5)]

#: Server connections of one database by kind: a lock session is named exactly
#: ``leasectl/<replica id>``; everything else in the database (PgBouncer's server connections)
#: is the pooler's.
_KINDS = """
SELECT count(*) FILTER (WHERE application_name LIKE 'leasectl/%%'
                         AND application_name NOT LIKE 'leasectl/%%/%%') AS lock,
       count(*) FILTER (WHERE application_name LIKE 'leasectl/%%/watch') AS watch,
       count(*) AS total
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""

_HOLDER = """
SELECT a.application_name, l2.epoch
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
LEFT JOIN leasectl_leases l2 ON l2.name = %(name)s
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = (%(ns)s::bigint & 4294967295)::oid
  AND l.objid = (%(key)s::bigint & 4294967295)::oid
"""


def _server_ticks(data_dir: Path) -> int:
    """CPU ticks of the postmaster and every process it forked (backends, walwriter, ...)."""
    try:
        master = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    total = _cpu_ticks(master)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            total += int(fields[11]) + int(fields[12])
    return total


def _held(dsn: str) -> dict[str, tuple[str, int]]:
    """{lease: (holder replica id, epoch)} for the pooled bench's leases that are held now."""
    from leasectl.keys import int4_hash, namespace_for

    out: dict[str, tuple[str, int]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in POOLED_LEASES:
            row = conn.execute(
                _HOLDER, {"name": name, "ns": namespace_for("leasectl"), "key": int4_hash(name)}
            ).fetchone()
            if row is not None:
                out[name] = (str(row[0]).removeprefix("leasectl/"), int(row[1] or 0))
    return out


def _heir(dsn: str, lease: str, holder: str) -> str | None:
    """The replica placement would choose for ``lease`` were ``holder`` gone, as the database
    shows the live replicas now."""
    from leasectl.placement import Placement, Replica

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT json_build_array(id, campaigns_for, preferred_for, wedged, live_for, labels)"
            " FROM leasectl_live_replicas('', 5.0)"
        ).fetchall()
    view = [Replica.from_row(r[0]) for r in rows]
    return Placement([r for r in view if r.id != holder]).choose(lease)


def _lock_session_ids(dsn: str) -> set[str]:
    """The replicas with a lock session now (application_name ``leasectl/<id>``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT substr(application_name, 10) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'leasectl/%%'"
            " AND application_name NOT LIKE 'leasectl/%%/%%'"
        ).fetchall()
    return {str(r[0]) for r in rows}


def _kinds(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(_KINDS).fetchone()
    assert row is not None
    return {"lock": int(row[0]), "watch": int(row[1]), "total": int(row[2])}


def _until(pred: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def bench_pooled(
    server: EmbeddedPostgres, n: int, mode: str, kills: int, work: Path
) -> dict[str, Any]:
    dsn = new_db(server.ensure_running().dsn(), f"scale_{mode}_{n}")
    pgb: PgBouncer | None = None
    work_dsn = ""
    if mode == "pooled":
        pgb = PgBouncer(work / f"pgb-{n}", dsn, ["127.0.0.1"], max_client_conn=n + 100)
        pgb.start()
        work_dsn = pgb.dsn()
    procs: dict[str, ReplicaProcess] = {}
    serial = iter(range(1_000_000))

    def spawn() -> ReplicaProcess:
        rid = f"{mode[0]}{n}-{next(serial)}"
        procs[rid] = ReplicaProcess(
            dsn, rid, POOLED_LEASES, acquire_interval=1.0, standby=mode, work_dsn=work_dsn
        )
        return procs[rid]

    try:
        t_start = time.monotonic()
        for batch in range(0, n, 25):  # start in batches: 2 cores import Python 25 at a time
            started = [spawn() for _ in range(min(25, n - batch))]
            for p in started:
                p.ready(300)
        _until(lambda: len(_held(dsn)) == len(POOLED_LEASES), 60, "every lease held")
        started_s = time.monotonic() - t_start
        if mode == "pooled":
            _until(
                lambda: _kinds(dsn)["lock"] <= 2 * len(POOLED_LEASES) + 2,
                90,
                "standbys closed their lock sessions",
                1.0,
            )
        time.sleep(5.0)
        window = 20.0
        calls0, xacts0 = _counters(dsn)
        srv0 = _server_ticks(server.data_dir)
        pgb0 = _cpu_ticks(pgb.proc.pid) if pgb and pgb.proc else 0
        cpu0 = {rid: _cpu_ticks(p.pid) for rid, p in procs.items()}
        time.sleep(window)
        calls1, xacts1 = _counters(dsn)
        srv1 = _server_ticks(server.data_dir)
        pgb1 = _cpu_ticks(pgb.proc.pid) if pgb and pgb.proc else 0
        cpu = [(_cpu_ticks(p.pid) - cpu0[rid]) / CLK_TCK / window for rid, p in procs.items()]
        conns = _kinds(dsn)
        takeovers: list[float] = []
        lease = POOLED_LEASES[0]
        heir_ready = 0
        heir_took = 0
        for _ in range(kills):
            holder, epoch = _until(lambda: _held(dsn).get(lease), 30, f"{lease} held")
            direct = _lock_session_ids(dsn)
            heir = _heir(dsn, lease, holder)
            victim = procs[holder]
            t0 = time.monotonic()
            victim.signal(signal.SIGKILL)

            def taken(old: int = epoch, gone: str = holder) -> dict[str, Any] | None:
                for rid, p in procs.items():
                    if rid == gone:
                        continue
                    for ev in list(p.events):
                        if ev["ev"] == "acquired" and ev["lease"] == lease and ev["epoch"] > old:
                            return ev
                return None

            ev = _until(taken, 30, f"{lease} taken over", 0.01)
            takeovers.append(float(ev["mono"]) - t0)
            taker = next(rid for rid, p in procs.items() if ev in p.events)
            heir_ready += taker in direct  # the taker had its lock session before the kill
            heir_took += taker == heir
            if os.environ.get("REPLICA_PROC_LOG") and takeovers[-1] > 1.0:
                print(f"slow takeover {takeovers[-1]:.3f}s by {taker}, t0={t0:.3f}", flush=True)
                for line in procs[taker].stderr_lines[-40:]:
                    print("   ", line, flush=True)
            victim.close()
            del procs[holder]
            spawn().ready(60)
            time.sleep(3.0)  # a heir for the next kill: standbys look once per heartbeat
        return {
            "mode": mode,
            "replicas": n,
            "leases": len(POOLED_LEASES),
            "start_s": started_s,
            "lock_sessions": conns["lock"],
            "watch_sessions": conns["watch"],
            "direct_sessions": conns["lock"] + conns["watch"],
            "server_connections": conns["total"],
            "statements_per_s_per_replica": (calls1 - calls0) / window / n,
            "transactions_per_s_per_replica": (xacts1 - xacts0) / window / n,
            "server_cpu_pct": 100 * (srv1 - srv0) / CLK_TCK / window,
            "pgbouncer_cpu_pct": 100 * (pgb1 - pgb0) / CLK_TCK / window if pgb else None,
            "client_cpu_per_replica_pct": 100 * statistics.mean(cpu) if cpu else None,
            "kills": len(takeovers),
            "takeover_p50_s": percentile(takeovers, 50),
            "takeover_p99_s": percentile(takeovers, 99),
            "takeover_max_s": max(takeovers) if takeovers else None,
            "takeovers_s": [round(t, 3) for t in takeovers],
            "taker_had_lock_session": heir_ready,
            "taker_was_the_heir": heir_took,
        }
    finally:
        for p in procs.values():
            p.close()
        if pgb is not None:
            pgb.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--leases", default="1,10,100,1000")
    p.add_argument("--replicas", default="1,10,30")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--pooled", default="", help="replica counts for part (c), e.g. 10,100,300")
    p.add_argument("--modes", default="direct,pooled", help="leases.standby modes for (c)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="leasectl-scale-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        pooled = [int(x) for x in args.pooled.split(",") if x]
        # direct mode keeps two server sessions per replica (lock + watch)
        server = EmbeddedPostgres(
            work / "pgdata", max_connections=max([400, *(2 * n + 100 for n in pooled)])
        )
        info = server.ensure_running()
        try:
            out: dict[str, Any] = {"leases": [], "replicas": []}
            dsn = new_db(info.dsn(), "scale_leases")
            for n in [int(x) for x in args.leases.split(",") if x]:
                row = bench_leases(dsn, n)
                out["leases"].append(row)
                print(json.dumps(row), flush=True)
            for n in [int(x) for x in args.replicas.split(",") if x]:
                row = bench_replicas(server, n, args.kills, work)
                out["replicas"].append(row)
                print(json.dumps(row), flush=True)
            out["pooled"] = []
            for n in pooled:
                for mode in [m for m in args.modes.split(",") if m]:
                    row = bench_pooled(server, n, mode, args.kills, work)
                    out["pooled"].append(row)
                    print(json.dumps(row), flush=True)
        finally:
            server.stop("fast")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
