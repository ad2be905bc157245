"""Errors of the worker layer."""

from __future__ import annotations

from fl.errors import FedsimError

__all__ = ["ProtocolError", "RemoteError", "WorkerError"]


class WorkerError(FedsimError):
    """A worker could not do what was asked (unknown object, bad operation...)."""


class ProtocolError(FedsimError):
    """Bytes that are not a valid fedsim message (including pickled payloads)."""


class RemoteError(WorkerError):
    """The worker answered with an error reply; ``code`` names its kind."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.remote_message = message
