"""The original API's JSON shapes: request bodies in, responses out.

Pure presentation: which JSON the original clients send and expect, mapped
to and from the protobuf messages. No decision about the data is made here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

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


BODY_SHAPES: dict[str, Callable[[Json], Json]] = {
    "TrackEvents": track_events_body,
    "StreamEvents": track_events_body,  # per line
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


# Methods whose success is 204 with no body are absent.
RESPONSE_SHAPES: dict[str, Callable[[Message], Json]] = {
    "GetAnalytics": _analytics,
    "ListGoals": lambda r: {"goals": list(r.goals)},
    "ListNamespaces": lambda r: {"namespaces": list(r.namespaces)},
    "GetPredictions": _predictions,
    "StreamEvents": lambda r: {"accepted": r.accepted, "messages": r.messages},
    "GetNudges": _nudges,
}
