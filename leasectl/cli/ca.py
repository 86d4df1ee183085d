"""``leasectl ca rotate-kek``: re-encrypt every local CA key under a new key-encryption key.

The KEKs are read from environment variables or files, never from the command line (argv is
visible to every user through ``ps``). All issuer keys change in one transaction or none do;
see :func:`loops.ca_keys.rotate_kek`. Afterwards point ``loops.ca.kek`` (``kek_env`` /
``kek_file``) at the new KEK and restart the replicas: until then they cannot decrypt the
keys and their CRL and issuance work fails with a named error.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from leasectl import extras
from leasectl import status as st
from leasectl.cli import exit_codes
from leasectl.cli.args import add_common, settings_from
from leasectl.errors import ConfigError, LeasectlError


def add_ca_parser(sub: Any) -> None:
    p = sub.add_parser("ca", help="local CA key management")
    actions = p.add_subparsers(dest="action", required=True)
    r = actions.add_parser(
        "rotate-kek",
        help="re-encrypt every issuer's CA key under a new key-encryption key (one transaction)",
    )
    add_common(r)
    old = r.add_mutually_exclusive_group(required=True)
    old.add_argument("--old-kek-env", metavar="NAME", help="env var holding the current KEK")
    old.add_argument("--old-kek-file", metavar="PATH", help="file holding the current KEK")
    old.add_argument(
        "--from-plaintext",
        action="store_true",
        help="the keys are stored in plaintext: encrypt them (keys already under the new KEK "
        "are left as they are)",
    )
    new = r.add_mutually_exclusive_group(required=True)
    new.add_argument("--new-kek-env", metavar="NAME", help="env var holding the new KEK")
    new.add_argument("--new-kek-file", metavar="PATH", help="file holding the new KEK")
    r.set_defaults(handler=cmd_ca)


def _secret(env: str | None, file: str | None, what: str) -> str:
    if env:
        value = os.environ.get(env, "")
        if not value:
            raise ConfigError(f"{what}: environment variable {env!r} is not set or empty")
        return value
    assert file is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
    try:
        value = Path(file).expanduser().read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: cannot read {file!r}: {type(exc).__name__}") from None
    if not value:
        raise ConfigError(f"{what}: {file!r} is empty")
    return value


def cmd_ca(args: argparse.Namespace) -> int:
    # the CLI's one use of the certificate loops, imported only when `ca` runs
    extras.require("certs", "leasectl ca")
    from leasectl.certs.ca_keys import CaKeyError, rotate_kek

    old = None if args.from_plaintext else _secret(args.old_kek_env, args.old_kek_file, "old KEK")
    new = _secret(args.new_kek_env, args.new_kek_file, "new KEK")
    settings = settings_from(args)
    with st.connect(st.status_dsn(settings), settings, "ca-rotate-kek") as conn:
        try:
            count = rotate_kek(conn, old, new)
        except CaKeyError as exc:
            raise LeasectlError(f"{exc}; no key was changed") from None
    print(
        f"re-encrypted {count} CA key(s) under the new KEK; set loops.ca.kek_env / kek_file "
        "to it and restart the replicas"
    )
    return exit_codes.OK
