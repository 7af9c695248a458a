"""diffusers, imported only when an export or a load needs it, with a one-line error naming the
version to install when it is missing."""

from __future__ import annotations

from types import ModuleType

from ..errors import InteropError

DIFFUSERS_SPEC = "diffusers==0.42.1"  # the version the mappings were written and tested against


def require_diffusers() -> ModuleType:
    """The ``diffusers`` module, or InteropError (one line) with the command that installs it."""
    try:
        import diffusers
    except ImportError:
        raise InteropError(f"this needs Hugging Face diffusers, which is not installed: "
                           f"pip install {DIFFUSERS_SPEC}") from None
    return diffusers
