"""The original API's answer JSON: response messages in the shapes its clients expect.

Pure presentation: each function renders one protobuf response. No decision about
the data is made here. A long array may be left to render as it is encoded (``Each``).

A page of a paged read adds ``next_page_token`` only when another page follows: a client
that asks for no pages gets a whole answer, in exactly the original's shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from gateway.json_steps import Each
from kimball_grpc.codec.proto_mapping import counter_type_name, json_value
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

Json = Any


def analytics_json(response: pb.GetAnalyticsResponse) -> Json:
    """A namespace's counters: ``{"counts": [...]}``, rendered as the answer is encoded (a
    namespace may hold hundreds of thousands)."""
    return _paged({"counts": Each(response.counts, _counter_json)}, response)


def _counter_json(c: pb.Counter) -> Json:
    """One counter. A weekly one is named as the original named it, after its event, a
    space, then its ISO year and week run together, the week not padded (``signup
    20262``, ``signup 202610``): its clients parse that. ``year`` and ``week`` are added."""
    item = {
        "name": f"{c.name} {c.year}{c.week}" if c.type == pb.COUNTER_TYPE_WEEKLY else c.name,
        "type": counter_type_name(c.type),
        "count": c.count,
        "event_counts": [{"events": list(e.events), "count": e.count} for e in c.event_counts],
        "single_event_counts": [{"name": s.name, "count": s.count} for s in c.single_event_counts],
        "value": {"sum": c.value.sum},
    }
    if c.type == pb.COUNTER_TYPE_WEEKLY:
        item["year"] = c.year
        item["week"] = c.week
    return item


def _paged(out: dict[str, Json], response: Message) -> Json:
    """``out`` with the response's ``next_page_token`` when another page follows."""
    token = getattr(response, "next_page_token", "")
    if token:
        out["next_page_token"] = token
    return out


def strings_json(field: str) -> Callable[[Message], Json]:
    """A response's repeated string ``field`` as ``{field: [...]}``."""

    def render(response: Message) -> Json:
        return _paged({field: list(getattr(response, field))}, response)

    return render


def stream_events_json(response: pb.StreamEventsResponse) -> Json:
    """What a stream of event batches applied: ``{"accepted", "messages"}``."""
    return {"accepted": response.accepted, "messages": response.messages}


def subscribed_event_json(response: pb.SubscribeResponse) -> Json:
    """One event of a subscription, flat: numbers as numbers. A replayed event has no
    ``user_id`` and no ``datetime`` (the log keeps neither)."""
    event = response.event
    out: dict[str, Json] = {
        "sequence": response.sequence,
        "namespace": event.namespace,
        "event_name": event.event_name,
        "user_hash": response.user_hash,
        "replayed": response.replayed,
        "dropped": response.dropped,
    }
    if event.user_id:
        out["user_id"] = event.user_id
    if event.HasField("value"):
        out["value"] = event.value
    if event.HasField("datetime"):
        out["datetime"] = event.datetime.ToJsonString()
    return out


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


def predictions_json(response: pb.GetPredictionsResponse) -> Json:
    """Per goal its predictions, an external target's as ``TARGET_yes`` and ``TARGET_no``
    beside Kimball's own."""
    out: dict[str, Json] = {
        "goals": {name: _goal_prediction(g) for name, g in sorted(response.goals.items())}
    }
    if response.external_problems:  # absent when every target answered: the original shape
        out["external_problems"] = [
            {"target": p.target, "reason": p.reason} for p in response.external_problems
        ]
    return out


def nudges_json(response: pb.GetNudgesResponse) -> Json:
    """A user's nudges towards a goal, most predictive first."""
    return {
        "nudges": [
            {"event_name": n.event_name, "prediction": n.prediction} for n in response.nudges
        ],
        "goal": response.goal,
        "user_id": response.user_id,
    }


def feature_spec_json(spec: pb.FeatureSpec) -> Json:
    """A feature spec with each user condition as an object."""
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
    # Only when set: a spec without them reads as before.
    if spec.HasField("rollout_percentage"):
        out["rollout_percentage"] = spec.rollout_percentage
    if spec.stickiness:
        out["stickiness"] = spec.stickiness
    if spec.group_id:
        out["group_id"] = spec.group_id
    if spec.variants:
        out["variants"] = [
            {"name": v.name, "weight": v.weight, "payload": v.payload} for v in spec.variants
        ]
    return out


def feature_spec_history_json(history: pb.FeatureSpecHistory) -> Json:
    """A flag's changes, newest first; ``old_spec`` or ``new_spec`` null when there was none
    before (created) or after (deleted), ``time`` null when unknown."""
    changes = [
        {
            "time": c.time.ToJsonString() if c.HasField("time") else None,
            "token_id": c.token_id,
            "old_spec": feature_spec_json(c.old_spec) if c.HasField("old_spec") else None,
            "new_spec": feature_spec_json(c.new_spec) if c.HasField("new_spec") else None,
        }
        for c in history.changes
    ]
    return _paged({"changes": changes}, history)


def feature_specs_json(specs: pb.FeatureSpecs) -> Json:
    """Every feature spec and the set's version."""
    out = {"featureSpecs": [feature_spec_json(s) for s in specs.specs], "version": specs.version}
    return _paged(out, specs)


def features_json(response: pb.EvaluateFeaturesResponse) -> Json:
    """Every flag's value for a user, by name, and the variants of those that have one
    (only then: an answer without variants reads as before)."""
    out: dict[str, Json] = {"features": dict(sorted(response.features.items()))}
    if response.variants:
        out["variants"] = dict(sorted(response.variants.items()))
    return out
