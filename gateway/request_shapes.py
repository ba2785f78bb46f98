"""The original API's request JSON: what its clients send, as the request messages' JSON.

Pure presentation: bodies and query parameters as the original clients give them,
mapped to the JSON of the protobuf request. No decision about the data is made here.
"""

from __future__ import annotations

import base64
from typing import Any

from multidict import MultiMapping

from gateway.request_json import parse_json

Json = Any


class BadBody(ValueError):
    """A request body the original API would not have taken either."""


def track_events_body(body: Json) -> Json:
    """One event, ``{"events": [...]}`` or a bare array, as a TrackEventsRequest dict."""
    if isinstance(body, list):
        return {"events": body}
    if not isinstance(body, dict):
        raise BadBody('the body must be an event, {"events": [...]} or an array of events')
    if "events" in body:
        if "event_name" in body:
            raise BadBody('give either one event or "events", not both')
        return body
    return {"events": [body]}


def feature_spec_body(body: Json) -> Json:
    """A spec as original clients send it: each user condition ``[property, comparator,
    value]`` or ``{"property", "comparator", "value"}``; the message takes objects."""
    if not isinstance(body, dict):
        raise BadBody("the body must be a feature spec object")
    conditions = body.get("user")
    if conditions is None:
        return body
    if not isinstance(conditions, list):
        raise BadBody("user must be a list of conditions [property, comparator, value]")
    keys = ("property", "comparator", "value")
    objects = []
    for index, condition in enumerate(conditions):
        if isinstance(condition, list) and len(condition) == 3:
            condition = dict(zip(keys, condition, strict=True))
        elif not (isinstance(condition, dict) and all(k in condition for k in keys)):
            raise BadBody(
                f"user condition {index} must be [property, comparator, value] or "
                f'{{"property", "comparator", "value"}}'
            )
        objects.append(condition)
    return {**body, "user": objects}


class BadParameter(ValueError):
    """A query parameter that cannot be used; ``parameter`` names it."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter} {problem}")
        self.parameter = parameter


def features_query(query: MultiMapping[str]) -> Json:
    """``/v0/features?user_obj=&context_obj=``: each a base64-encoded JSON object."""
    known = {"user_obj": "user", "context_obj": "context"}
    out: dict[str, Json] = {}
    for parameter in query:
        if parameter not in known:
            raise BadParameter(parameter, "is not a parameter (user_obj, context_obj)")
        values = query.getall(parameter)
        if len(values) > 1:
            raise BadParameter(parameter, "is given more than once")
        out[known[parameter]] = _base64_json_object(parameter, values[0])
    return out


def _base64_json_object(parameter: str, text: str) -> dict[str, Json]:
    # Standard or URL-safe alphabet, padding optional; a '+' decoded as a space is restored.
    raw = text.strip().replace(" ", "+")
    altchars = b"-_" if "-" in raw or "_" in raw else None
    try:
        data = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=altchars, validate=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        raise BadParameter(parameter, "is not valid base64") from None
    try:
        value = parse_json(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadParameter(parameter, "is not base64 of valid JSON") from None
    if not isinstance(value, dict):
        raise BadParameter(parameter, "must be base64 of a JSON object")
    return value
