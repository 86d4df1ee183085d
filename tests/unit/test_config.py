"""The configuration loader: sources, overrides, validation (all problems at once), secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from leasectl.certs.settings import LoopsSettings
from leasectl.config import dump, load, load_settings, to_yaml
from leasectl.errors import ConfigError
from leasectl.settings import Settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "leasectl.yaml"
    path.write_text(text)
    return path


def test_packaged_default_is_the_model_default() -> None:
    settings = load(environ={})
    assert settings == Settings(loops=LoopsSettings())


def test_config_env_var_selects_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "leases:\n  lease_ttl: 4\n")
    assert load(environ={"LEASECTL_CONFIG": str(path)}).leases.lease_ttl == 4.0


def test_env_overrides_single_keys_nested_and_typed(tmp_path: Path) -> None:
    path = write(tmp_path, "leases:\n  lease_ttl: 4\n")
    settings = load(
        path,
        environ={
            "LEASECTL_LEASES__LEASE_TTL": "6",
            "LEASECTL_LOOPS__NOTIFICATIONS__SMTP__HOST": "smtp.example.com",
            "LEASECTL_LOOPS__NOTIFICATIONS__SMTP__PORT": "2525",
            "LEASECTL_SCHEDULER__ONLY": "digest,crl_generation",
            "LEASECTL_REPLICA__MAY_LEAD": "false",
            "LEASECTL_REPLICA__ID": "0123",  # a string field keeps the text as written
            "LEASECTL_DSN": "host=db dbname=app",
            "LEASECTL_VERBOSE": "1",  # a CLI flag variable, not a key override
        },
    )
    assert settings.leases.lease_ttl == 6.0
    assert isinstance(settings.loops, LoopsSettings)
    assert settings.loops.notifications.smtp.host == "smtp.example.com"
    assert settings.loops.notifications.smtp.port == 2525
    assert settings.scheduler.only == ("digest", "crl_generation")
    assert settings.replica.may_lead is False
    assert settings.replica.id == "0123"
    assert settings.database.dsn == "host=db dbname=app"


def test_command_line_overrides_win(tmp_path: Path) -> None:
    env = {"LEASECTL_DSN": "host=env"}
    assert load(None, {"database.dsn": "host=cli"}, environ=env).database.dsn == "host=cli"


def test_all_problems_reported_at_once_with_paths_values_and_origin(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "leases:\n"
        "  lease_ttl: 2\n"
        "  heartbeat_interval: 3\n"
        "  safety_margin: 5\n"
        "  acquire_intervall: 1\n"
        "database:\n"
        "  pool_max_size: many\n"
        "loops:\n"
        "  jobs:\n"
        "    processor:\n"
        "      interval: -1\n",
    )
    with pytest.raises(ConfigError) as info:
        load(path, environ={"LEASECTL_METRICS__ENABLED": "maybe"})
    err = info.value
    assert err.source == str(path)
    text = "\n".join(err.problems)
    assert len(err.problems) == 6, text
    assert (
        f"leases.acquire_intervall: unknown key 'acquire_intervall'; did you mean "
        f"'acquire_interval'? ({path}:5)" in text
    )
    assert f"database.pool_max_size: expected an integer, got 'many' ({path}:7)" in text
    assert "loops.jobs.processor.interval: must be > 0 seconds, got -1" in text
    assert "leases.heartbeat_interval: must be < leases.lease_ttl (2), got 3" in text
    assert "leases.eviction_grace: must be >= leases.safety_margin (5), got 2" in text
    assert (
        "metrics.enabled: expected a boolean (true or false), got 'maybe' "
        "(env LEASECTL_METRICS__ENABLED)" in text
    )


def test_type_errors_for_nested_lists_and_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "loops:\n  renewal:\n    default_thresholds_days: [30, soon]\n  crl: 5\n"
        "logging:\n  format: jsonn\n",
    )
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    text = "\n".join(info.value.problems)
    assert "loops.renewal.default_thresholds_days[1]: expected an integer, got 'soon'" in text
    assert "loops.crl: expected a mapping (section), got 5" in text
    assert "logging.format: expected one of text, json, got 'jsonn'; did you mean 'json'?" in text


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "leases:\n  lease_ttl: [1,\n")
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert "not valid YAML at line" in info.value.problems[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.yaml", environ={})


def test_secrets_from_env_and_file_never_printed(tmp_path: Path) -> None:
    secret_file = tmp_path / "smtp_pw"
    secret_file.write_text("s3cret-file\n")
    path = write(
        tmp_path,
        "database:\n  dsn_env: APP_DSN\n"
        "loops:\n  notifications:\n"
        f"    smtp:\n      password_file: {secret_file}\n"
        "    webhook:\n      hmac_key_env: HOOK_KEY\n"
        "      url: https://user:pw@hooks.example:8443/in?token=t0ken\n",
    )
    env = {"APP_DSN": "host=db user=app password=hunter2", "HOOK_KEY": "k3y-from-env"}
    settings = load(path, environ=env)
    assert isinstance(settings.loops, LoopsSettings)
    assert settings.loops.notifications.smtp.password == "s3cret-file"
    assert settings.loops.notifications.webhook.hmac_key == "k3y-from-env"
    assert "hunter2" in settings.database.dsn
    shown = to_yaml(settings)
    for secret in ("hunter2", "s3cret-file", "k3y-from-env", "t0ken", "pw@"):
        assert secret not in shown
    assert "url: https://***@hooks.example:8443/in?***" in shown
    assert "password=***" in shown
    assert dump(settings, redact=False)["loops"]["notifications"]["webhook"]["hmac_key"] == (
        "k3y-from-env"
    )


def test_secret_errors_do_not_leak(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "database:\n  dsn: 'host=db password=hunter2 =oops'\n  lock_dsn_env: UNSET_VAR\n"
        "loops:\n  notifications:\n    webhook:\n      hmac_key: 42\n      hmac_key_env: X\n",
    )
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    text = str(info.value)
    assert "hunter2" not in text
    assert "database.lock_dsn_env: environment variable 'UNSET_VAR' is not set" in text
    assert "loops.notifications.webhook.hmac_key: set only one of hmac_key, hmac_key_env" in text
    assert "database.dsn: expected a libpq connection string or URI" in text


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level"):
        load(write(tmp_path, "- a\n- b\n"), environ={})


def test_env_override_into_a_scalar_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "leases: 5\n")
    with pytest.raises(ConfigError) as info:
        load(path, environ={"LEASECTL_LEASES__LEASE_TTL": "3"})
    text = str(info.value)
    assert "leases.lease_ttl: cannot set it because leases is not a mapping" in text
    assert "leases: expected a mapping (section), got 5" in text


def test_unknown_env_override_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load(environ={"LEASECTL_LEASES__LEASE_TIL": "3"})
    assert "did you mean 'lease_ttl'?" in str(info.value)
    assert "env LEASECTL_LEASES__LEASE_TIL" in str(info.value)


def test_a_whole_section_from_one_env_variable_is_an_error_not_ignored() -> None:
    with pytest.raises(ConfigError) as info:
        load(environ={"LEASECTL_LIMITS": "{smtp: {rate: 1, per: 1}}"})
    text = str(info.value)
    assert "environment variable LEASECTL_LIMITS" in text.splitlines()[0]
    assert "limits: one variable cannot set a whole section" in text
    assert "LEASECTL_LIMITS__<KEY>=<value>" in text
    # the documented single-variable names are not sections
    load(environ={"LEASECTL_DSN": "host=/nowhere", "LEASECTL_REPLICA_ID": "r1"})


def test_partial_nested_section_keeps_the_fields_own_defaults(tmp_path: Path) -> None:
    """Regression: ``sessions: {enabled: true}`` reset the interval to LoopToggle's 60 s."""
    cfg = tmp_path / "partial.yaml"
    cfg.write_text(
        "loops:\n  gc:\n    sessions: {enabled: true}\n  jobs:\n    processor: {enabled: false}\n"
    )
    s = load_settings(str(cfg))
    assert isinstance(s.loops, LoopsSettings)
    assert s.loops.gc.sessions.interval == 3600.0
    assert s.loops.jobs.processor.interval == 30.0 and not s.loops.jobs.processor.enabled


def test_loop_cron_and_tz_are_checked_with_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "loops:\n"
        "  crl:\n"
        "    loop:\n"
        "      cron: '0 25 * * *'\n"
        "      tz: Europe/Nowhere\n"
        "  notifications:\n"
        "    send:\n"
        "      interval: 30\n"
        "      cron: '*/5 * * * *'\n",
    )
    with pytest.raises(ConfigError) as err:
        load(path, environ={})
    text = str(err.value)
    assert "loops.crl.loop.cron: bad cron expression '0 25 * * *': Bad hour" in text
    assert f"({path}:4)" in text
    assert "loops.crl.loop.tz: unknown time zone 'Europe/Nowhere'" in text and f"{path}:5" in text
    assert "loops.notifications.send.cron: set either interval or cron, not both" in text


def test_shipped_loop_takes_cron_and_tz_from_its_settings(tmp_path: Path) -> None:
    from leasectl.certs.registry import build_loops

    path = write(
        tmp_path,
        "loops:\n  crl:\n    loop:\n      cron: '0 3 * * *'\n      tz: Europe/Berlin\n"
        "    next_update: 200000\n",
    )
    settings = load(path, environ={})
    assert isinstance(settings.loops, LoopsSettings)
    assert settings.loops.crl.loop.cron == "0 3 * * *"
    spec = next(s for s in build_loops(settings.loops) if s.name == "crl_generation")
    assert (spec.cron, spec.tz, spec.interval, spec.jitter_s) == (
        "0 3 * * *",
        "Europe/Berlin",
        86400.0,
        0.0,
    )
