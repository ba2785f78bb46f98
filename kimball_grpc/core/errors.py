"""Domain errors. Each declares the gRPC status code it maps to, by name.

The core stays free of gRPC types: the server turns ``grpc_code`` into a
``grpc.StatusCode`` in one place (``status_mapping``), and the REST gateway maps
that code onward to HTTP.
"""

from __future__ import annotations

from functools import partial


class KimballError(Exception):
    """Base of every error the core raises on purpose.

    ``details`` names the offending parameter or value, e.g. ``{"event": "nope"}``.
    """

    grpc_code = "INTERNAL"

    def __init__(self, message: str, /, **details: str) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self) -> tuple:
        # Pickled whole, details included (the REST worker processes receive the engine's
        # refusals so): the default keeps only the message.
        return partial(type(self), **self.details), (self.message,)

    @property
    def reason(self) -> str:
        """The ``google.rpc.ErrorInfo`` reason: the error's kind."""
        return type(self).__name__


class InvalidArgument(KimballError):
    """The request is wrong; nothing was changed."""

    grpc_code = "INVALID_ARGUMENT"


class NotFound(KimballError):
    """The thing asked about does not exist."""

    grpc_code = "NOT_FOUND"


class ConfigError(KimballError):
    """The configuration cannot be used; the server must not start."""

    grpc_code = "FAILED_PRECONDITION"


class OutOfRange(KimballError):
    """Asked for something past what is kept (e.g. a log position already removed)."""

    grpc_code = "OUT_OF_RANGE"


class LimitExceeded(KimballError):
    """The request would grow the state past a configured limit; nothing was changed.

    ``details`` hold ``limit`` (the limit's name, as in ``kimball_limit_refusals_total``)
    and ``setting`` (what raises it), besides what the request named.
    """

    grpc_code = "RESOURCE_EXHAUSTED"

    @property
    def limit(self) -> str:
        """The limit's name."""
        return self.details["limit"]


class ResourceExhausted(KimballError):
    """A limit was reached (e.g. an answer larger than the server sends); nothing changed."""

    grpc_code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(KimballError):
    """The server is not in a state to do this (e.g. it keeps no log to replay from)."""

    grpc_code = "FAILED_PRECONDITION"


class ShuttingDown(KimballError):
    """The server is shutting down: the call ends (or is refused) and can be made again
    once it is back."""

    grpc_code = "UNAVAILABLE"


class InvalidStoredData(KimballError):
    """Stored state or a record cannot be decoded."""

    grpc_code = "DATA_LOSS"


class PartitionsUnavailable(KimballError):
    """In a cluster, the owners of some user partitions did not answer (or own none of
    them now): the query fails whole rather than answer for part of the users. Asking
    again once the partitions have owners answers it."""

    grpc_code = "UNAVAILABLE"
