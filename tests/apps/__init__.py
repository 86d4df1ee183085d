"""Applications built on ``leasectl.App``, run by the tests with ``leasectl run --app``."""
