"""Secrets never reach the console: DSN passwords, SMTP passwords, HMAC keys, routing keys,
the CA key-encryption key — in ``config show``, ``status --json``, ``timing`` and error paths."""

from __future__ import annotations

from pathlib import Path

import yaml
from psycopg import conninfo

from tests.cli.conftest import cli_env, run_cli

PASSWORD = "pw-Zq81-never-print"
SECRETS = {
    "LT_SMTP_PASSWORD": "smtp-Kq2-never-print",
    "LT_HMAC_KEY": "hmac-Rr7-never-print",
    "LT_ROUTING_KEY": "route-Ww3-never-print",
    "LT_KEK": "kek-Tt5-never-print-32-bytes-long!!",
}


def _with_password(dsn: str) -> str:
    params = conninfo.conninfo_to_dict(dsn)
    params["password"] = PASSWORD  # the embedded test server trusts local connections
    return conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def _config(tmp_path: Path, dsn: str) -> Path:
    path = tmp_path / "leasectl.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"dsn": dsn},
                "metrics": {"listen": ""},
                "loops": {
                    "notifications": {
                        "smtp": {
                            "host": "127.0.0.1",
                            "username": "ops",
                            "password_env": "LT_SMTP_PASSWORD",
                        },
                        "webhook": {
                            "url": "https://hooks.example.com/in",
                            "hmac_key_env": "LT_HMAC_KEY",
                        },
                        "pagerduty": {"routing_key_env": "LT_ROUTING_KEY"},
                    },
                    "ca": {"kek_env": "LT_KEK"},
                },
            }
        )
    )
    return path


def _assert_clean(text: str) -> None:
    assert PASSWORD not in text
    for value in SECRETS.values():
        assert value not in text
    assert "Traceback" not in text


def test_no_secret_in_show_status_timing_or_errors(dsn: str, tmp_path: Path) -> None:
    env = cli_env(_config(tmp_path, _with_password(dsn)), **SECRETS)
    for args in (("config", "show"), ("config", "check"), ("status", "--json"), ("timing",)):
        out = run_cli(*args, env=env, timeout=60)
        _assert_clean(out.stdout + out.stderr)
        assert out.returncode in (0, 1), (args, out.stdout, out.stderr)
    # Error paths: an unreachable server and a refused migration still print no secret.
    bad = cli_env(
        _config(tmp_path, f"host=127.0.0.1 port=1 dbname=x password={PASSWORD}"), **SECRETS
    )
    for args in (("migrate",), ("status",), ("run",)):
        out = run_cli(*args, env=bad, timeout=60)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        _assert_clean(out.stdout + out.stderr)
