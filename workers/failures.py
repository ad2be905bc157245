"""How a worker's request handler fails: a code and a message, turned into an ErrorReply."""

from __future__ import annotations

__all__ = ["ERROR_CODES", "RequestFailure"]

ERROR_CODES: tuple[str, ...] = (
    "protocol",  # the bytes are not a valid message
    "bad_request",  # a valid message the worker cannot act on (bad id, config, plan...)
    "not_found",  # an id that names no stored object or plan
    "exists",  # an id that is already taken (ids are chosen by the client)
    "op_failed",  # an op or plan raised while computing
    "train_failed",  # local training or evaluation raised while computing
    "internal",  # a bug in the worker; the message names the exception
)


class RequestFailure(Exception):
    """Raised inside handlers; becomes an ErrorReply."""

    def __init__(self, code: str, message: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
