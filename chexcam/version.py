"""The package version, in its own module so every layer (and setup.cfg) can read it without cycles."""

__version__ = "0.2.0"
