"""What a drill's replicas run: the shipped loops, or a user's App (``--app MODULE:ATTR``).

The generic invariants (at most one holder, increasing epochs, each leased slot once,
liveness) hold for any App's leased loops. The domain checks need the shipped loops and the
drill's feed: notifications (lost, duplicated outside the crash window, signatures) need
``notification_send``, jobs need ``job_processor``, CRL numbers need ``crl_generation``.
Without them the checks are skipped, and the report says which and why.

The App is loaded here only to read its loops (names, intervals, misfire policies); the
replicas load it themselves in their own processes (``leasectl run --app``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from leasectl.app import App, load_app
from leasectl.errors import ConfigError
from leasectl.loop import LoopSpec
from leasectl.tools.drill.liveness import LoopPolicy
from leasectl.tools.drill.wedge_loop import WEDGE_LOOP, wedge_spec

#: The shipped loops a drill runs, at drill speed: the leased ones are the side effects under
#: test; job_* run everywhere (jobs must not be lost when a replica dies mid-job).
SHIPPED = (
    "notification_send",
    "notification_retry",
    "crl_generation",
    "job_processor",
    "job_retry",
    "job_timeout",
)

#: Domain check -> the shipped loop it needs.
DOMAIN_CHECKS = {
    "no_lost_notification": "notification_send",
    "no_duplicate_outside_crash_window": "notification_send",
    "signatures": "notification_send",
    "no_lost_job": "job_processor",
    "crl_numbers_increase": "crl_generation",
}

DRILL_APP = "leasectl.tools.drill.drill_app:app"


@dataclass
class Target:
    """The loops the replicas run (``--only``) and what the checks need to know of them."""

    app: str | None
    specs: list[LoopSpec]
    skipped_checks: dict[str, str] = field(default_factory=dict)

    @property
    def only(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def leased(self) -> list[str]:
        return [s.name for s in self.specs if s.placement == "leased"]

    def has(self, loop: str) -> bool:
        return loop in self.only

    def policies(self) -> dict[str, LoopPolicy]:
        return {
            s.name: LoopPolicy(s.name, s.interval, s.misfire)
            for s in self.specs
            if s.placement == "leased"
        }

    def default_lease(self, wanted: str | None) -> str:
        """The lease whose holder the rounds hit: ``wanted``, else ``notification_send`` when
        it runs, else the App's first leased loop."""
        leased = [n for n in self.leased if n != WEDGE_LOOP]
        if wanted:
            if wanted not in self.leased:
                raise ConfigError(
                    f"--lease {wanted}: not a leased loop of the drill's replicas "
                    f"(leased: {', '.join(leased) or 'none'})"
                )
            return wanted
        if "notification_send" in leased:
            return "notification_send"
        if not leased:
            raise ConfigError(f"--app {self.app}: the App has no leased loop to drill")
        return sorted(leased)[0]

    def replica_env(self, wedge_dir: Path | None) -> dict[str, str | None]:
        """Environment the replicas need (None: unset): which App, where the wedge flags are."""
        env: dict[str, str | None] = {"LEASECTL_APP": self.app}
        if wedge_dir is not None:
            env.update(
                LEASECTL_APP=DRILL_APP,
                LEASECTL_DRILL_BASE_APP=self.app or "",
                LEASECTL_DRILL_WEDGE_DIR=str(wedge_dir),
            )
        if self.app:
            # The replicas run in the drill's work directory: find the user's module from
            # where the drill was started, as `leasectl run --app` would.
            paths = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
            env["PYTHONPATH"] = ":".join(dict.fromkeys(paths))
        return env


def resolve(app: str | None, config: Path, *, wedge: bool) -> Target:
    """Load the App (``app``; None: the shipped loops) with the replicas' config and pick the
    loops the drill runs."""
    if app:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        loaded = load_app(app)
        loaded.configure(config=str(config))
    else:
        loaded = App(config=str(config))
        loaded.include(loaded.settings.scheduler.loops_package)
    specs = loaded.loops()
    if app:
        # The App's own loops, plus the shipped ones the drill knows how to feed. The shipped
        # registry is loaded only if the App includes the certificate loops: never import it.
        registry = sys.modules.get("leasectl.certs.registry")
        shipped = set(getattr(registry, "LOOP_MODULES", ()))
        specs = [s for s in specs if s.name not in shipped or s.name in SHIPPED]
    else:
        specs = [s for s in specs if s.name in SHIPPED]
    if WEDGE_LOOP in {s.name for s in specs}:
        raise ConfigError(f"--app {app}: the loop name {WEDGE_LOOP} is the drill's own")
    if wedge:
        specs.append(wedge_spec())
    names = {s.name for s in specs}
    skipped = {
        check: f"the replicas do not run {loop} (the App does not include the shipped loops)"
        for check, loop in DOMAIN_CHECKS.items()
        if loop not in names
    }
    return Target(app, specs, skipped)
