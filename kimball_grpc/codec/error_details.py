"""Reading the ``google.rpc.ErrorInfo`` that Kimball attaches to a failed call."""

from __future__ import annotations

from collections.abc import Iterable

from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def error_info(
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a failed call (empty if it has none): its reason, and in its
    metadata which parameter or value was wrong."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    return error_details_pb2.ErrorInfo()


def error_metadata(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """The ErrorInfo metadata of a failed call: which parameter or value was wrong."""
    return dict(error_info(trailing_metadata).metadata)
