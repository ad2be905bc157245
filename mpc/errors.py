"""Errors of the MPC library."""

from __future__ import annotations

from fl.errors import FedsimError

__all__ = ["MPCError"]


class MPCError(FedsimError):
    """An MPC computation cannot proceed as asked (value out of range, bad shares...)."""
