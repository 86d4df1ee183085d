"""The fifteen certificate-lifecycle loops leasectl ships (see docs/operator/loops.md)."""
