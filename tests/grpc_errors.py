"""Reading Kimball's error details (google.rpc.ErrorInfo) off a failed call."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


def error_metadata(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The ErrorInfo metadata naming the offending parameter."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return dict(info.metadata)
    return {}
