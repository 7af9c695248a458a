"""difflab's own error types. The command line prints these as one line and exits with code 2;
any other exception is a bug and keeps its traceback.

``ConfigError`` is also a ``ValueError`` (a bad value is what it reports), so code that caught
``ValueError`` from a config still does.
"""

from __future__ import annotations


class DifflabError(Exception):
    """Bad input or a state of the user's files that difflab reports in one line."""


class ConfigError(DifflabError, ValueError):
    """A config, preset or argument value that is invalid (the message names it)."""


class CheckpointError(DifflabError):
    """A run directory or checkpoint that is missing, incomplete or corrupt, or that cannot
    resume as asked (the message is one line)."""


class InteropError(DifflabError):
    """A model that cannot travel to or from another library (diffusers) exactly, or that
    library missing; the message says why in one line."""
