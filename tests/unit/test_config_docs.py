"""The packaged leasectl.yaml and the configuration reference are generated from the model."""

from __future__ import annotations

from pathlib import Path

from leasectl import config

REPO = Path(__file__).resolve().parents[2]
HOW = "regenerate with: make docs (python -m leasectl.config --write)"


def test_configuration_reference_matches_the_model() -> None:
    committed = (REPO / "docs/operator/configuration.md").read_text()
    assert committed == config.reference(), HOW


def test_packaged_yaml_matches_the_model() -> None:
    committed = (REPO / "config/leasectl.yaml").read_text()
    assert committed == config.default_yaml(), HOW


def test_every_setting_is_documented() -> None:
    text = config.reference()
    for path in ("loops.notifications.smtp.host", "leases.lease_ttl", "loops.crl.loop.interval"):
        assert f"`{path}`" in text
    assert "LEASECTL_LOOPS__NOTIFICATIONS__SMTP__HOST" in text


def test_every_setting_has_a_description() -> None:
    from leasectl import _config_docs
    from leasectl.settings import Settings

    loops_cls, loops_docs = config._loops_model()
    missing = [
        p for p, _t, _d, _s, text in _config_docs.model(Settings, loops_cls, loops_docs) if not text
    ]
    assert not missing, (
        "describe these settings with a comment on the dataclass field (or in "
        "leasectl/_config_docs.py DESCRIPTIONS for the core, loops/settings_docs.py DOCS for "
        f"loops.*), then `make docs`: {missing}"
    )


def test_loops_descriptions_live_in_the_loops_package() -> None:
    """Domain knowledge stays in loops/: the core's tables describe no ``loops.*`` key."""
    from leasectl import _config_docs
    from leasectl.certs import settings_docs

    core = set(_config_docs.DESCRIPTIONS) | set(_config_docs.SECTIONS)
    assert not [k for k in core if k == "loops" or k.startswith("loops.")]
    assert "loops.notifications.smtp.host" in settings_docs.DOCS
    assert settings_docs.TOGGLES["loops.crl.loop"] == "crl_generation"
