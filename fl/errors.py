"""Root of fedsim's exception tree.

Every package raises a subclass of :class:`FedsimError` so that the CLI can
turn any expected failure into one clear line and a non-zero exit code, while
unexpected exceptions (bugs) still surface with a traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "FedsimError"]


class FedsimError(Exception):
    """Base class of every error fedsim raises on purpose."""


class DataError(FedsimError):
    """A dataset, partition or data directory cannot be used as asked."""


class ConfigError(FedsimError):
    """An experiment option is out of range or does not parse."""
