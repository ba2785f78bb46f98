"""The original API's JSON shapes by gRPC method name, for code outside the gateway.

Read from the route table: ``RESPONSE_SHAPES`` renders each method's response (methods
that answer 204 are absent). The functions themselves are in ``request_shapes`` and
``response_shapes``.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message

from gateway.request_shapes import Json, track_events_body
from gateway.route_table import ROUTE_TABLE

__all__ = ["RESPONSE_SHAPES", "track_events_body"]

RESPONSE_SHAPES: dict[str, Callable[[Message], Json]] = {
    route.method: route.answer.render for route in ROUTE_TABLE if route.answer is not None
}
