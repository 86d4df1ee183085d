"""Start-up cost: ``import leasectl`` and exec -> campaigning.

import
    ``python -X importtime -c "import leasectl"`` in a fresh interpreter, ``--rounds`` times:
    the cumulative import time of ``leasectl`` and, inside it, of ``psycopg`` (both from the
    ``-X importtime`` report), and the whole interpreter's wall time for the same command next
    to ``python -c pass``.
exec -> campaigning
    A fresh process per round, timed from just before ``exec`` to the ``daemon_started`` log
    line (``App.start()`` returns once the lease manager campaigns: settings loaded, the
    database checked and migrated, the lock session open). Two targets: a user App of one
    leased loop (``python app.py``) and ``leasectl run`` with the shipped certificate loops.
    The database is a migrated one on a throwaway embedded PostgreSQL, started before timing.

Usage::

    .venv/bin/python bench/startup.py --rounds 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from leasectl.embedded import EmbeddedPostgres  # noqa: E402
from leasectl.migrate import migrate  # noqa: E402

APP = """\
from leasectl import App

app = App()


@app.loop(every=60, leased=True)
def tick(ctx):
    pass


if __name__ == "__main__":
    raise SystemExit(app.run())
"""


def _summary(values: list[float], unit: str = "ms", scale: float = 1000) -> str:
    v = sorted(x * scale for x in values)
    return f"median {statistics.median(v):.0f} {unit} (min {v[0]:.0f}, max {v[-1]:.0f}, n={len(v)})"


def _importtime(module: str) -> tuple[float, float]:
    """Cumulative seconds of ``module`` and of psycopg inside it, from -X importtime."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stderr
    cumulative: dict[str, float] = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cum, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        cumulative.setdefault(name, int(cum) / 1e6)
    return cumulative[module], cumulative.get("psycopg", 0.0)


def _wall(code: str) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
    return time.monotonic() - t0


def _exec_to_campaign(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if '"daemon_started"' in line:
                return time.monotonic() - t0
        raise RuntimeError(f"{args} exited {proc.wait()} before campaigning")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    imports, psycopgs, walls, bare = [], [], [], []
    for _ in range(args.rounds):
        total, psy = _importtime("leasectl")
        imports.append(total)
        psycopgs.append(psy)
        walls.append(_wall("import leasectl"))
        bare.append(_wall("pass"))
    print(f"import leasectl (-X importtime, cumulative): {_summary(imports)}")
    print(f"  of which psycopg:                          {_summary(psycopgs)}")
    print(f"python -c 'import leasectl' wall:            {_summary(walls)}")
    print(f"python -c pass wall:                         {_summary(bare)}")

    with tempfile.TemporaryDirectory(prefix="leasectl-startup-") as tmp:
        work = Path(tmp)
        server = EmbeddedPostgres(work / "pgdata")
        dsn = server.ensure_running().dsn()
        try:
            migrate(dsn)
            (work / "app.py").write_text(APP)
            base = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
            env = {
                **base,
                "LEASECTL_DSN": dsn,
                "LEASECTL_METRICS__LISTEN": "127.0.0.1:0",
                "LEASECTL_LOGGING__FORMAT": "json",
                "LEASECTL_LOGGING__LEVEL": "INFO",
            }
            leasectl = str(Path(sys.executable).with_name("leasectl"))
            for name, cmd in (
                ("user App (python app.py)", [sys.executable, "app.py"]),
                ("leasectl run (certificate loops)", [leasectl, "run", "--log-format", "json"]),
            ):
                times = [_exec_to_campaign(cmd, work, env) for _ in range(args.rounds)]
                print(f"exec -> campaigning, {name}: {_summary(times)}")
        finally:
            server.stop("immediate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
