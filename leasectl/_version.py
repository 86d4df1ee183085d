"""The package version, in its own module: importing it never runs ``leasectl/__init__``."""

__version__ = "0.1.0"
