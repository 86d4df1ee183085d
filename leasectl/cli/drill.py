"""``leasectl drill``: parser and handler (the work is in :mod:`leasectl.tools.drill.runner`)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from leasectl import extras
from leasectl.cli import exit_codes
from leasectl.cli.args import add_argument, add_common
from leasectl.cli.run import add_app_argument
from leasectl.errors import ConfigError
from leasectl.tools.drill.faults import KINDS, parse_kinds

if TYPE_CHECKING:
    from leasectl.tools.drill.rounds import RoundResult


def add_drill_parser(sub: Any) -> None:
    p = sub.add_parser(
        "drill",
        help="failover drills: inject faults into lease holders, measure, check invariants",
        description=(
            "Start N replicas of `leasectl run`, inject faults into the holder of a lease round "
            "after round, measure takeover, and check the invariants over the whole run. "
            "Exit 0: all invariants hold; 3: an invariant failed; 2: could not start."
        ),
    )
    add_common(p)
    add_app_argument(p)  # the replicas run that App; generic checks on its leased loops
    add_argument(
        p, "--replicas", env="DRILL_REPLICAS", type=int, default=3, help="replica processes"
    )
    add_argument(
        p,
        "--faults",
        env="DRILL_FAULTS",
        default="graceful,kill,stop,terminate,partition,db-restart",
        help=f"comma-separated fault kinds ({', '.join(KINDS)})",
    )
    add_argument(
        p, "--rounds", env="DRILL_ROUNDS", type=int, default=20, help="rounds per fault kind"
    )
    add_argument(
        p,
        "--data-dir",
        env="DRILL_DATA_DIR",
        help="embedded server data directory (default: a temporary one, removed afterwards)",
    )
    add_argument(
        p,
        "--lease",
        env="DRILL_LEASE",
        default=None,
        help="the lease whose holder is hit (default: notification_send, or with --app the "
        "App's first leased loop)",
    )
    add_argument(
        p,
        "--notifications-per-s",
        env="DRILL_NOTIFICATIONS_PER_S",
        type=float,
        default=5.0,
        help="webhook notifications the feed inserts per second",
    )
    add_argument(
        p,
        "--jobs-per-s",
        env="DRILL_JOBS_PER_S",
        type=float,
        default=2.0,
        help="issuance jobs the feed inserts per second",
    )
    add_argument(
        p,
        "--replication",
        env="DRILL_REPLICATION",
        choices=("async", "sync"),
        default="async",
        help="db-failover: the standby streams asynchronously, or synchronously "
        "(synchronous_standby_names + synchronous_commit=remote_apply)",
    )
    add_argument(
        p,
        "--storm-seconds",
        env="DRILL_STORM_SECONDS",
        type=float,
        default=5.0,
        help="backend-kill-storm: how long each storm lasts",
    )
    add_argument(
        p,
        "--storm-per-s",
        env="DRILL_STORM_PER_S",
        type=float,
        default=5.0,
        help="backend-kill-storm: work backends terminated per second",
    )
    add_argument(
        p,
        "--report",
        env="DRILL_REPORT",
        default="drill-report.html",
        help="write the HTML report here (default: drill-report.html; empty: none)",
    )
    add_argument(p, "--json", env="DRILL_JSON", help="write every round as JSON here")
    add_argument(
        p, "--no-progress", env="DRILL_NO_PROGRESS", action="store_true", help="no progress bar"
    )
    p.set_defaults(handler=cmd_drill)


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_drill(args: argparse.Namespace) -> int:
    # The drill's own dependencies (rich, the certificate loops, the embedded server) are the
    # 'demo' extra: imported here, so `import leasectl.cli` and every other command work
    # without it.
    extras.require("demo", "leasectl drill")
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from leasectl.tools.drill.report import (
        checks_table,
        ms,
        summary_table,
        write_html,
        write_json,
    )
    from leasectl.tools.drill.runner import Drill, DrillOptions

    console = Console(stderr=True)
    try:
        kinds = parse_kinds(args.faults)
    except ValueError as exc:
        raise ConfigError(f"--faults: {exc}") from exc
    if args.replicas < 2:
        raise ConfigError("--replicas: a drill needs at least 2 replicas (someone must take over)")
    if args.rounds < 1:
        raise ConfigError("--rounds: at least 1")
    opts = DrillOptions(
        replicas=args.replicas,
        faults=kinds,
        rounds=args.rounds,
        dsn=args.dsn or None,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        lease=args.lease or "",
        notifications_per_s=args.notifications_per_s,
        jobs_per_s=args.jobs_per_s,
        config=Path(args.config) if args.config else None,
        replication=args.replication,
        storm_s=args.storm_seconds,
        storm_per_s=args.storm_per_s,
        app=args.app or None,
    )
    # Explicit handlers: a drill started in the background (SIGINT ignored) still stops cleanly.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    signal.signal(signal.SIGINT, _terminate_as_interrupt)
    progress = Progress(
        TextColumn("[bold]drill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        disable=bool(args.no_progress),
    )
    task = progress.add_task("starting", total=None)

    def on_progress(done: int, total: int, r: RoundResult | None, what: str) -> None:
        desc = what
        if r is not None:
            desc = f"#{r.index} {r.kind}: takeover {ms(r.takeover_s)}"
            if not r.recovered:
                desc += " [red]NOT RECOVERED[/]"
            if args.no_progress:
                console.print(desc + (" " + "; ".join(r.notes) if r.notes else ""))
        elif args.no_progress and what.startswith("draining:"):
            console.print(desc)  # the drain waiting for deliveries (every 2 s at most)
        progress.update(task, completed=done, total=total, description=desc)

    drill = Drill(opts, on_progress)
    for kind, why in drill.skipped.items():
        console.print(f"[yellow]skipping fault kind {kind}:[/] {why}")
    console.print("Ctrl-C once: stop injecting faults and report; twice: stop at once.")
    with progress:
        result = drill.run()
    out = Console(width=None if sys.stdout.isatty() else 160)
    out.print(summary_table(result))
    totals = result.analysis.totals
    if not opts.app:  # an App's drill has no certificate workload: these would read 0 of 0
        out.print(
            f"lost notifications: {totals['lost_notifications']} of {totals['notifications']}; "
            f"lost jobs: {totals['lost_jobs']} of {totals['jobs']}; "
            f"webhook deliveries: {totals['deliveries']}"
        )
    if any(r.kind == "db-failover" for r in result.rounds):
        out.print(
            f"{opts.replication} replication lost {totals['replication_lost_commits']} commit(s) "
            f"of the old primaries: {totals['replication_lost_notifications']} notification(s) "
            f"and {totals['replication_lost_jobs']} job(s) acknowledged by the feed (the "
            "replication mode's loss, not leasectl's)"
        )
    out.print(checks_table(result))
    for c in result.analysis.checks:
        for example in c.examples if not c.ok else []:
            out.print(f"  {c.name}: {example}")
    if args.json:
        write_json(result, args.json)
        console.print(f"wrote {args.json}")
    if args.report:
        write_html(result, args.report)
        console.print(f"wrote {args.report}")
    sys.stdout.flush()
    if not result.analysis.ok:
        return exit_codes.INVARIANT_FAILED
    return exit_codes.INTERRUPTED if result.interrupted else exit_codes.OK
