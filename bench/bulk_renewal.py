"""Bulk renewal: N certificates due at once, three ``leasectl run`` replicas, one receipt.

The scheduler-throughput number certctl's load tests left "capture pending" (issue 11). One
database (a throwaway embedded PostgreSQL unless ``--dsn``), seeded with:

- one ``local`` issuer with a real CA (``loops.ca.create_ca``), one owner with an e-mail, and one
  renewal policy: 30-day window, auto-renew, one alert threshold (14 days) on the Webhook
  channel;
- ``--certs`` N Active certificates of that issuer and policy, all expiring in 10 days: inside
  the renewal window and past the 14-day threshold, so each needs one renewal and one alert.

Then ``--replicas`` (default 3) real ``python -m leasectl.cli run`` processes start against it
(every loop enabled as shipped; intervals shortened for a bench: job_processor 1 s instead of
30 s, so the first batch does not wait for the next tick, notification_send 1 s with batches of
2,000) and the clock runs until every certificate has a new version: renewal_check creates one
Renewal job per certificate, job_processor issues real X.509 certificates (``cryptography``,
ECDSA P-256) and completes them, and notification_send delivers the expiry alerts to a real
signed-webhook receiver (``leasectl.tools.webhook_sink``). The receipt:

- end-to-end seconds (process start to the last certificate's version) and certificates/s; the
  seconds until every alert was delivered;
- CPU: the replicas' (``/proc/<pid>/stat``), the server's (its backends, embedded server only),
  and the signing part: N x the cost of one ``issue_leaf``, measured in this process before the
  run. What is not signing is the scheduler (claims, completions, renewal_check, the loops'
  Python and the database);
- the server's work per certificate from ``pg_stat_database`` deltas (transactions, i.e.
  statements and explicit transactions, and rows inserted/updated) over the whole run;
- invariants: exactly one new version per certificate, each certificate Active with the new
  expiry, no certificate with two jobs, every alert delivered and no notification key received
  twice. The exit status is 1 if one fails.

Run::

    .venv/bin/python bench/bulk_renewal.py              # N = 10,000
    .venv/bin/python bench/bulk_renewal.py --certs 500  # quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg import conninfo  # noqa: E402

from leasectl.certs import ca, ca_keys  # noqa: E402
from leasectl.certs.settings import CaSettings  # noqa: E402
from leasectl.embedded import EmbeddedPostgres  # noqa: E402
from leasectl.migrate import migrate  # noqa: E402
from leasectl.tools import replicas  # noqa: E402
from leasectl.tools.webhook_sink import WebhookSink  # noqa: E402

ISSUER = "bulk-ca"
POLICY = "bulk-policy"
OWNER = "bulk-owner"
EXPIRES_IN_DAYS = 10
HMAC_KEY = "bulk-renewal-bench-key"
KEK_ENV = "LEASECTL_BULK_RENEWAL_KEK"  # the replicas read loops.ca.kek from it (kek_env)
CLK_TCK = os.sysconf("SC_CLK_TCK")
STATS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")


# -- seeding -------------------------------------------------------------------------------


def seed(dsn: str, n: int, kek: str) -> None:
    """The issuer with its CA, the owner, the policy and N certificates expiring in 10 days."""
    cert_pem, key_pem = ca.create_ca("bulk renewal bench CA")
    key_pem = ca_keys.seal(key_pem, kek)  # stored encrypted, as leasectl requires
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=EXPIRES_IN_DAYS)
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO leasectl_certs.issuers (id, name, type, ca_cert_pem, ca_key_pem)"
            " VALUES (%s, 'bulk CA', 'local', %s, %s)",
            (ISSUER, cert_pem, key_pem),
        )
        conn.execute(
            "INSERT INTO leasectl_certs.owners (id, name, email) VALUES (%s, 'Bulk', "
            "'bulk@example.test')",
            (OWNER,),
        )
        channels = {tier: ["Webhook"] for tier in ("informational", "warning", "critical")}
        conn.execute(
            "INSERT INTO leasectl_certs.renewal_policies (id, name, renewal_window_days, "
            "alert_thresholds_days,"
            " alert_channels) VALUES (%s, 'bulk', 30, '[14]', %s)",
            (POLICY, json.dumps(channels)),
        )
        conn.execute(
            "INSERT INTO leasectl_certs.managed_certificates (id, name, common_name, sans, "
            "issuer_id,"
            " renewal_policy_id, owner_id, status, expires_at)"
            " SELECT 'mc-' || lpad(g::text, 6, '0'), 'bulk-' || g, 'host' || g || '.bulk.test',"
            " ARRAY['host' || g || '.bulk.test'], %s, %s, %s, 'Active', %s"
            " FROM generate_series(1, %s) g",
            (ISSUER, POLICY, OWNER, expires, n),
        )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def config_text(webhook_url: str) -> str:
    """The replicas' configuration: shipped defaults, bench intervals, the local receiver."""
    return json.dumps(  # JSON is YAML
        {
            "loops": {
                "ca": {"kek_env": KEK_ENV},
                "jobs": {"processor": {"interval": 1.0}},
                "notifications": {
                    "send": {"interval": 1.0},
                    "batch": 2000,
                    "webhook": {"url": webhook_url, "hmac_key": HMAC_KEY},
                    "allow_private_networks": ["127.0.0.0/8"],
                },
            }
        },
        indent=2,
    )


# -- measuring -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def server_pids(data_dir: Path | None) -> list[int]:
    """The embedded server's postmaster and its children (backends and workers)."""
    if data_dir is None:
        return []
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == postmaster:
            pids.append(int(stat.parent.name))
    return pids


def replica_cpu(procs: list[replicas.ReplicaProcess]) -> float:
    return sum(cpu_seconds(r.pid) for r in procs)


def server_cpu(data_dir: Path | None, before: dict[int, float]) -> float | None:
    """The server's CPU since ``before`` (per-process readings), None if not measurable."""
    if not before:
        return None
    return sum(cpu_seconds(pid) - before.get(pid, 0.0) for pid in server_pids(data_dir))


def db_stats(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT {', '.join(STATS)} FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return dict(zip(STATS, (int(x) for x in row), strict=True))


def signing_cost(samples: int = 200) -> float:
    """Seconds of CPU one ``issue_leaf`` takes here (median of batches), as job_processor signs."""
    cert_pem, key_pem = ca.create_ca("signing cost probe")
    ca_cert, ca_key = ca.load_issuer_ca(cert_pem, key_pem, CaSettings(allow_plaintext_ca_keys=True))
    per_leaf = []
    for _ in range(5):
        t0 = time.process_time()
        for i in range(samples // 5):
            name = f"probe{i}.bulk.test"
            ca.issue_leaf(ca_cert, ca_key, name, [name], days=90, key_type="ec")
        per_leaf.append((time.process_time() - t0) / (samples // 5))
    return statistics.median(per_leaf)


def scalar(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
    return None if row is None else row[0]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` every 50 ms; the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"not within {timeout:.0f} s: {what}")


# -- the run -------------------------------------------------------------------------------


@dataclass
class Receipt:
    certs: int
    replicas: int
    seconds: float = 0.0  # replicas started -> every certificate has a new version
    first_version_after: float = 0.0
    # From the first new version to the last: the renewal itself, without process start-up.
    steady_seconds: float = 0.0
    steady_replica_cpu: float = 0.0
    steady_server_cpu: float | None = None
    alerts_seconds: float = 0.0  # replicas started -> every alert delivered
    sign_cost_ms: float = 0.0
    replica_cpu: float = 0.0
    server_cpu: float | None = None
    signing_cpu: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)  # pg_stat_database deltas, whole run
    invariants: dict[str, bool] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # behind the invariants
    problems: list[str] = field(default_factory=list)

    @property
    def certs_per_second(self) -> float:
        return self.certs / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return all(self.invariants.values()) and not self.problems


@contextmanager
def started_replicas(
    dsn: str, config: Path, count: int, logs: Path, kek: str
) -> Iterator[list[replicas.ReplicaProcess]]:
    """``count`` real ``leasectl run`` processes; SIGTERM (then SIGKILL) on the way out."""
    env = {**os.environ, "PYTHONPATH": str(REPO), KEK_ENV: kek}
    started = []
    try:
        for i in range(count):
            rid = f"bulk-{i + 1}"
            out = (logs / f"{rid}.log").open("wb")
            cmd = replicas.run_command(config, rid, dsn=dsn)
            proc = replicas.spawn(cmd, env=env, stdout=out, stderr=out, cwd=REPO)
            started.append(replicas.ReplicaProcess(rid, proc))
        yield started
    finally:
        for r in started:
            r.signal(signal.SIGTERM)
        for r in started:
            try:
                r.proc.wait(30)
            except Exception:  # noqa: BLE001 - a replica that ignores SIGTERM is killed
                r.signal(signal.SIGKILL)
                r.proc.wait(10)


def check(dsn: str, n: int, sink: WebhookSink, counts: dict[str, int]) -> dict[str, bool]:
    """The receipt's invariants, each True when it holds; the numbers behind them in ``counts``."""
    versions = scalar(
        dsn,
        "SELECT count(*) FILTER (WHERE k = 1) FROM (SELECT count(*) AS k"
        " FROM leasectl_certs.certificate_versions GROUP BY certificate_id) v",
    )
    total_versions = scalar(dsn, "SELECT count(*) FROM leasectl_certs.certificate_versions")
    renewed = scalar(
        dsn,
        "SELECT count(*) FROM leasectl_certs.managed_certificates c JOIN "
        "leasectl_certs.certificate_versions v"
        " ON v.certificate_id = c.id AND v.not_after = c.expires_at"
        " WHERE c.status = 'Active' AND c.expires_at > now() + interval '80 days'",
    )
    jobs_twice = scalar(
        dsn,
        "SELECT count(*) FROM (SELECT certificate_id FROM leasectl_certs.jobs GROUP BY "
        "certificate_id"
        " HAVING count(*) > 1) d",
    )
    completed = scalar(dsn, "SELECT count(*) FROM leasectl_certs.jobs WHERE status = 'Completed'")
    alerts = scalar(dsn, "SELECT count(*) FROM leasectl_certs.notification_events")
    sent = scalar(
        dsn, "SELECT count(*) FROM leasectl_certs.notification_events WHERE status = 'sent'"
    )
    keys = sink.inbox.keys
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = {r[0] for r in conn.execute("SELECT id FROM leasectl_certs.notification_events")}
    counts.update(
        certificates_with_one_version=versions,
        versions=total_versions,
        renewed=renewed,
        certificates_with_two_jobs=jobs_twice,
        jobs_completed=completed,
        alerts=alerts,
        alerts_sent=sent,
        keys_received=len(keys),
        deliveries=sum(keys.values()),
    )
    return {
        "one new version per certificate": versions == total_versions == n,
        "every certificate Active with its new version's expiry": renewed == n,
        "one job per certificate, completed": jobs_twice == 0 and completed == n,
        "one alert per certificate, delivered": alerts == sent == n,
        "no notification key received twice": set(keys) == ids
        and all(v == 1 for v in keys.values()),
    }


def run(
    dsn: str,
    n: int,
    *,
    replica_count: int = 3,
    data_dir: Path | None = None,
    timeout: float = 1800.0,
    progress: Callable[[str], None] = lambda _: None,
) -> Receipt:
    """Seed ``dsn`` (a migrated, empty database), run the replicas, return the receipt."""
    receipt = Receipt(certs=n, replicas=replica_count)
    kek = ca_keys.generate_kek()
    seed(dsn, n, kek)
    receipt.sign_cost_ms = signing_cost() * 1000
    receipt.signing_cpu = n * receipt.sign_cost_ms / 1000
    sink = WebhookSink(HMAC_KEY.encode(), reject_unverified=True)
    sink.start()
    try:
        with tempfile.TemporaryDirectory(prefix="leasectl-bulk-") as tmp:
            config = Path(tmp) / "leasectl.yaml"
            config.write_text(config_text(sink.url()))
            stats0 = db_stats(dsn)
            server0 = {pid: cpu_seconds(pid) for pid in server_pids(data_dir)}
            t0 = time.monotonic()
            with started_replicas(dsn, config, replica_count, Path(tmp), kek) as procs:
                progress(f"{replica_count} replicas started; renewing {n:,} certificates")
                versions = (
                    "SELECT count(DISTINCT certificate_id) FROM leasectl_certs.certificate_versions"
                )
                t_first = wait_for(lambda: scalar(dsn, versions) > 0, timeout, "a first version")
                replica_first, server_first = replica_cpu(procs), server_cpu(data_dir, server0)
                receipt.first_version_after = t_first - t0
                t1 = wait_for(lambda: scalar(dsn, versions) >= n, timeout, "every version")
                receipt.seconds = t1 - t0
                receipt.replica_cpu = replica_cpu(procs)
                receipt.server_cpu = server_cpu(data_dir, server0)
                receipt.steady_seconds = t1 - t_first
                receipt.steady_replica_cpu = receipt.replica_cpu - replica_first
                if receipt.server_cpu is not None and server_first is not None:
                    receipt.steady_server_cpu = receipt.server_cpu - server_first
                progress(f"renewed in {receipt.seconds:.1f} s; waiting for the alerts")
                t2 = wait_for(
                    lambda: sum(sink.inbox.keys.values()) >= n, timeout, "every alert delivered"
                )
                receipt.alerts_seconds = t2 - t0
                if sink.inbox.bad:
                    receipt.problems.append(f"{sink.inbox.bad} deliveries failed verification")
                for r in procs:
                    if not r.alive():
                        receipt.problems.append(f"replica {r.replica_id} {r.state}")
                logs = {r.replica_id: Path(tmp) / f"{r.replica_id}.log" for r in procs}
            for rid, log in logs.items():
                text = log.read_text(errors="replace")
                if "Traceback" in text:
                    receipt.problems.append(f"{rid} logged a traceback")
            stats1 = db_stats(dsn)
            receipt.stats = {k: stats1[k] - stats0[k] for k in STATS}
    finally:
        sink.stop()
    receipt.invariants = check(dsn, n, sink, receipt.counts)
    return receipt


# -- main ----------------------------------------------------------------------------------


def report(r: Receipt, machine: str) -> str:
    steady_certs = r.certs - 1  # the first version starts the steady window
    lines = [
        f"{machine}; N = {r.certs:,} certificates, {r.replicas} replicas",
        "",
        "| measure | value |",
        "|---|---|",
        f"| end-to-end (replicas started -> every certificate renewed) | {r.seconds:.1f} s |",
        f"| certificates/s, end to end | {r.certs_per_second:,.0f} |",
        f"| first new version after (process start, migrations check, first ticks) |"
        f" {r.first_version_after:.1f} s |",
        f"| certificates/s from the first new version to the last |"
        f" {steady_certs / r.steady_seconds if r.steady_seconds else 0:,.0f} |",
        f"| every alert delivered after | {r.alerts_seconds:.1f} s |",
        f"| signing one leaf (key + certificate, ECDSA P-256, measured here) |"
        f" {r.sign_cost_ms:.2f} ms CPU |",
    ]
    for label, client, server, certs in (
        ("end to end", r.replica_cpu, r.server_cpu, r.certs),
        ("first to last version", r.steady_replica_cpu, r.steady_server_cpu, steady_certs),
    ):
        total = client + (server or 0.0)
        signing = certs * r.sign_cost_ms / 1000
        server_text = f" + server {server:.1f} s" if server is not None else ""
        shares = (
            f"; {total / certs * 1000:.2f} ms per certificate: signing {signing / total:.0%},"
            f" scheduler (everything else) {1 - signing / total:.0%}"
            if total
            else ""
        )
        lines.append(f"| CPU, {label} | replicas {client:.1f} s{server_text}{shares} |")
    for k, v in r.stats.items():
        lines.append(f"| server {k} per certificate (whole run) | {v / r.certs:.2f} |")
    lines.append("")
    for name, ok in r.invariants.items():
        lines.append(f"- {'ok' if ok else 'FAILED'}: {name}")
    lines.append("- counts: " + ", ".join(f"{k} {v:,}" for k, v in r.counts.items()))
    for problem in r.problems:
        lines.append(f"- PROBLEM: {problem}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--certs", type=int, default=10_000, help="certificates to renew (N)")
    p.add_argument("--replicas", type=int, default=3, help="leasectl run processes")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up after (seconds)")
    p.add_argument("--dsn", help="an empty database to use (default: a throwaway embedded one)")
    p.add_argument("--json", action="store_true", help="print the receipt as JSON")
    args = p.parse_args(argv)
    server: EmbeddedPostgres | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    data_dir = None
    if args.dsn:
        dsn = args.dsn
    else:
        tmp = tempfile.TemporaryDirectory(prefix="leasectl-bench-bulk-")
        data_dir = Path(tmp.name) / "pgdata"
        server = EmbeddedPostgres(data_dir)
        params = conninfo.conninfo_to_dict(server.ensure_running().dsn())
        with psycopg.connect(conninfo.make_conninfo(**params), autocommit=True) as conn:  # type: ignore[arg-type]
            conn.execute("CREATE DATABASE bench_bulk")
        params["dbname"] = "bench_bulk"
        dsn = conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    try:
        migrate(dsn)
        load = os.getloadavg()[0]
        receipt = run(
            dsn,
            args.certs,
            replica_count=args.replicas,
            data_dir=data_dir,
            timeout=args.timeout,
            progress=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
        pg = scalar(dsn, "SHOW server_version")
    except (TimeoutError, psycopg.Error) as exc:
        print(f"bulk renewal failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop("immediate")
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        print(json.dumps({**asdict(receipt), "certs_per_second": receipt.certs_per_second}))
    else:
        machine = (
            f"{os.cpu_count()} vCPU, Python {platform.python_version()}, PostgreSQL {pg},"
            f" 1-min load average at start {load:.1f}"
        )
        print(report(receipt, machine))
    return 0 if receipt.ok else 1


if __name__ == "__main__":
    sys.exit(main())
