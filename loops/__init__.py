"""The fifteen certificate-lifecycle loops leasectl ships (see docs/operator/loops.md).

Imported as ``leasectl.certs`` (``app.include("leasectl.certs")``); the repository keeps them
in ``loops/``. They need the ``certs`` extra (cryptography, jinja2, boto3): without it the
import fails at once with one line naming it, not later inside a tick.
"""

from leasectl import extras

_absent = extras.missing("certs")
if _absent:
    raise ImportError(
        extras.message("certs", "the certificate loops (leasectl.certs)", _absent),
        name=__name__,
    )
