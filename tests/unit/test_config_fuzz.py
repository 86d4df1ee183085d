"""Property: whatever the input, the loader returns Settings or raises ConfigError."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leasectl.config import from_mapping, load
from leasectl.errors import ConfigError
from leasectl.settings import Settings

KEYS = st.sampled_from(
    [
        "database",
        "leases",
        "loops",
        "dsn",
        "lease_ttl",
        "heartbeat_interval",
        "notifications",
        "smtp",
        "password",
        "password_env",
        "hmac_key_file",
        "jobs",
        "processor",
        "interval",
        "enabled",
        "only",
        "namespace",
        "regions",
        "region_endpoints",
        "aws",
        "cloud_discovery",
        "scheduler",
        "metrics",
        "listen",
        "x",
        "",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=5)
)
DATA = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(KEYS | st.integers() | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)


def _check(fn: Any) -> None:
    try:
        result = fn()
    except ConfigError:
        return
    assert isinstance(result, Settings)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DATA)
def test_arbitrary_data_never_crashes(data: Any) -> None:
    _check(lambda: from_mapping(data, "fuzz", environ={}))
    # the same structure under every section
    _check(lambda: from_mapping({"leases": data, "loops": {"notifications": data}}, environ={}))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_yaml_text_never_crashes(text: str) -> None:
    from pathlib import Path
    from tempfile import TemporaryDirectory

    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        _check(lambda: load(path, environ={}))


@settings(max_examples=100, deadline=None)
@given(DATA.filter(lambda d: not isinstance(d, bytes)))
def test_arbitrary_yaml_documents_never_crash(data: Any) -> None:
    from pathlib import Path
    from tempfile import TemporaryDirectory

    try:
        text = yaml.safe_dump({"loops": data, "leases": data})
    except yaml.YAMLError:
        return
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text)
        _check(lambda: load(path, environ={}))


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "LEASECTL_LEASES__LEASE_TTL",
                "LEASECTL_SCHEDULER__ONLY",
                "LEASECTL_LOOPS__JOBS",
                "LEASECTL_LEASES__NAMESPACE",
                "LEASECTL_DSN",
                "LEASECTL_X__Y__Z",
                "LEASECTL_LOOPS__CLOUD_DISCOVERY__AWS__REGION_ENDPOINTS",
            ]
        ),
        st.text(max_size=30),
    )
)
def test_arbitrary_env_overrides_never_crash(env: dict[str, str]) -> None:
    _check(lambda: load(environ=env))
