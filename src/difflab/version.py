"""The version of difflab."""

__version__ = "0.1.0"
