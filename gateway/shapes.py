"""The original API's JSON shapes: request bodies in, responses out.

Pure presentation: which JSON the original clients send and expect, mapped
to and from the protobuf messages. No decision about the data is made here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from multidict import MultiMapping

from kimball_grpc.codec.proto_mapping import json_value
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

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


BODY_SHAPES: dict[str, Callable[[Json], Json]] = {
    "TrackEvents": track_events_body,
    "StreamEvents": track_events_body,  # per line
    "PutFeatureSpec": feature_spec_body,
}


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
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadParameter(parameter, "is not base64 of valid JSON") from None
    if not isinstance(value, dict):
        raise BadParameter(parameter, "must be base64 of a JSON object")
    return value


QUERY_SHAPES: dict[str, Callable[[MultiMapping[str]], Json]] = {
    "EvaluateFeatures": features_query,
}

_COUNTER_TYPES = {
    pb.COUNTER_TYPE_INTERNAL: "internal",
    pb.COUNTER_TYPE_NAMED: "named",
    pb.COUNTER_TYPE_WEEKLY: "weekly",
}


def _analytics(response: pb.GetAnalyticsResponse) -> Json:
    counts = []
    for c in response.counts:
        item = {
            "name": c.name,
            "type": _COUNTER_TYPES.get(c.type, "unknown"),
            "count": c.count,
            "event_counts": [{"events": list(e.events), "count": e.count} for e in c.event_counts],
            "single_event_counts": [
                {"name": s.name, "count": s.count} for s in c.single_event_counts
            ],
            "value": {"sum": c.value.sum},
        }
        if c.type == pb.COUNTER_TYPE_WEEKLY:
            item["year"] = c.year
            item["week"] = c.week
        counts.append(item)
    return {"counts": counts}


def _goal_prediction(goal: pb.GoalPrediction) -> Json:
    out: dict[str, Json] = {}
    if goal.note:
        out["note"] = goal.note
    if goal.events:
        out["events"] = {name: {"bayes": e.bayes} for name, e in sorted(goal.events.items())}
    for field in ("yes", "no", "likelihood", "probability"):
        if goal.HasField(field):
            out[field] = getattr(goal, field)
    for external in goal.external:
        out[f"{external.target}_yes"] = external.yes
        out[f"{external.target}_no"] = external.no
    return out


def _predictions(response: pb.GetPredictionsResponse) -> Json:
    out: dict[str, Json] = {
        "goals": {name: _goal_prediction(g) for name, g in sorted(response.goals.items())}
    }
    if response.external_problems:  # absent when every target answered: the original shape
        out["external_problems"] = [
            {"target": p.target, "reason": p.reason} for p in response.external_problems
        ]
    return out


def _nudges(response: pb.GetNudgesResponse) -> Json:
    return {
        "nudges": [
            {"event_name": n.event_name, "prediction": n.prediction} for n in response.nudges
        ],
        "goal": response.goal,
        "user_id": response.user_id,
    }


def _feature_spec(spec: pb.FeatureSpec) -> Json:
    out: dict[str, Json] = {
        "name": spec.name,
        "boolean": spec.boolean,
        "user": [
            {"property": c.property, "comparator": c.comparator, "value": json_value(c.value)}
            for c in spec.user
        ],
    }
    if spec.HasField("rollout_start"):
        out["rollout_start"] = spec.rollout_start.ToJsonString()
        out["rollout_end"] = spec.rollout_end.ToJsonString()
    return out


# Methods whose success is 204 with no body are absent.
RESPONSE_SHAPES: dict[str, Callable[[Message], Json]] = {
    "GetAnalytics": _analytics,
    "ListGoals": lambda r: {"goals": list(r.goals)},
    "ListNamespaces": lambda r: {"namespaces": list(r.namespaces)},
    "GetPredictions": _predictions,
    "StreamEvents": lambda r: {"accepted": r.accepted, "messages": r.messages},
    "GetNudges": _nudges,
    "PutFeatureSpec": _feature_spec,
    "GetFeatureSpec": _feature_spec,
    "ListFeatureSpecs": lambda r: {
        "featureSpecs": [_feature_spec(s) for s in r.specs],
        "version": r.version,
    },
    "EvaluateFeatures": lambda r: {"features": dict(sorted(r.features.items()))},
}
