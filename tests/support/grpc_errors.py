"""Reading Kimball's error details (google.rpc.ErrorInfo) off a failed call."""

from __future__ import annotations

import grpc

from kimball_grpc.codec import error_details


def error_metadata(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The ErrorInfo metadata naming the offending parameter."""
    return error_details.error_metadata(error.trailing_metadata())
