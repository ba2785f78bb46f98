"""JSON Schemas of the original API's JSON shapes, for the OpenAPI document.

Each describes what a function of ``request_shapes`` takes or one of ``response_shapes``
produces; the route table pairs them. ``COMPONENTS`` are the schemas referred to by
name (``#/components/schemas/...``).
"""

from __future__ import annotations

from typing import Any

from kimball_grpc.core.limits import MAX_NAME_LENGTH

Json = dict[str, Any]

# A name as the engine takes it (kimball_grpc.core.events.check_name): at most
# MAX_NAME_LENGTH characters, no control characters, no unpaired surrogates.
NAME: Json = {
    "type": "string",
    "maxLength": MAX_NAME_LENGTH,
    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f\\ud800-\\udfff]*$",
}
_GIVEN_NAME: Json = NAME | {"minLength": 1}
_COUNT: Json = {"type": "integer", "minimum": 0}
_NUMBER: Json = {"type": "number"}
_STRING: Json = {"type": "string"}
_MAX_EVENTS = 10_000  # events in one request, as the engine takes them
# A page of a paged read, when another follows: where it starts.
_NEXT_PAGE: Json = {"next_page_token": _STRING}


def ref(name: str) -> Json:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: Json, required: list[str] | None = None) -> Json:
    """An object with ``properties``, of which ``required`` (default: all) must be given."""
    return {
        "type": "object",
        "required": list(properties) if required is None else required,
        "properties": properties,
    }


def _array(items: Json) -> Json:
    return {"type": "array", "items": items}


def strings(key: str) -> Json:
    """``{key: [string, ...]}``, and ``next_page_token`` when another page follows."""
    return _object({key: _array(_STRING), **_NEXT_PAGE}, required=[key])


COMPONENTS: Json = {
    "Event": {
        "type": "object",
        "required": ["event_name", "user_id"],
        "additionalProperties": False,
        # null is taken as "not given", as protobuf's JSON mapping does.
        "properties": {
            "event_name": _GIVEN_NAME,
            "user_id": _GIVEN_NAME,
            "namespace": NAME | {"nullable": True},
            "value": _NUMBER | {"minimum": -1e15, "maximum": 1e15, "nullable": True},
            "ensure_goal": {"type": "boolean", "nullable": True},
            "datetime": {"type": "string", "format": "date-time", "nullable": True},
        },
    },
    "Counter": _object(
        {
            "name": _STRING
            | {
                "description": "The event's name; a weekly counter's is the event's name, a "
                "space, then its ISO year and week, the week not padded: 'signup 20262' is "
                "week 2 of 2026, 'signup 202610' week 10 (as the original named them)"
            },
            "type": {"type": "string", "enum": ["internal", "named", "weekly"]},
            "count": _COUNT,
            "event_counts": _array(_object({"events": _array(_STRING), "count": _COUNT})),
            "single_event_counts": _array(_object({"name": _STRING, "count": _COUNT})),
            "value": _object({"sum": _NUMBER}),
            "year": {"type": "integer"},
            "week": {"type": "integer", "minimum": 1, "maximum": 53},
        },
        required=["name", "type", "count", "event_counts", "single_event_counts", "value"],
    ),
    "FeatureSpec": {
        "type": "object",
        "description": "rollout_start and rollout_end: both or neither, end after start",
        "required": ["name"],
        "properties": {
            "name": _GIVEN_NAME,
            "boolean": {"type": "boolean"},
            "rollout_start": {"type": "string", "format": "date-time"},
            "rollout_end": {"type": "string", "format": "date-time"},
            "rollout_percentage": {"type": "integer", "minimum": 0, "maximum": 100},
            "stickiness": _STRING,
            "group_id": _STRING,
            "variants": _array(
                _object(
                    {
                        "name": _GIVEN_NAME,
                        "weight": {"type": "integer", "minimum": 0, "maximum": 1000},
                        "payload": _STRING,
                    },
                    required=["name", "weight"],
                )
            ),
            "user": {
                "type": "array",
                "maxItems": 100,
                "items": {
                    "oneOf": [
                        _object(
                            {
                                "property": _GIVEN_NAME,
                                "comparator": {"type": "string", "enum": ["=", "in"]},
                                "value": {},
                            }
                        ),
                        {"type": "array", "minItems": 3, "maxItems": 3},
                    ]
                },
            },
        },
    },
    "GoalPrediction": {
        "type": "object",
        "properties": {
            "events": {
                "type": "object",
                "additionalProperties": _object({"bayes": _NUMBER | {"minimum": 0, "maximum": 1}}),
            },
            "yes": _NUMBER,
            "no": _NUMBER,
            "likelihood": _NUMBER,
            "probability": _NUMBER | {"minimum": 0, "maximum": 1},
            "note": _STRING,
        },
        # External prediction targets add NAME_yes and NAME_no.
        "additionalProperties": _NUMBER,
    },
    "Error": _object({"error": _object({"what": _STRING})}),
    "Unauthorized": _object({"error": _STRING}),
}

# Request bodies.
TRACK_EVENTS: Json = {
    "oneOf": [
        ref("Event"),
        _array(ref("Event")) | {"maxItems": _MAX_EVENTS},
        {
            "type": "object",
            "required": ["events"],
            "additionalProperties": False,
            "properties": {"events": _array(ref("Event")) | {"maxItems": _MAX_EVENTS}},
        },
    ]
}
CREATE_GOAL: Json = {
    "type": "object",
    "required": ["goal_name"],
    "additionalProperties": False,
    "properties": {"goal_name": _GIVEN_NAME, "namespace": NAME | {"nullable": True}},
}
FEATURE_SPEC: Json = ref("FeatureSpec")  # a body and an answer

# Answers.
ANALYTICS: Json = _object({"counts": _array(ref("Counter")), **_NEXT_PAGE}, required=["counts"])
STREAM_EVENTS: Json = _object({"accepted": _COUNT, "messages": _COUNT})
PREDICTIONS: Json = _object(
    {
        "goals": {"type": "object", "additionalProperties": ref("GoalPrediction")},
        # Only when an external prediction target was skipped or had answers dropped.
        "external_problems": _array(_object({"target": _STRING, "reason": _STRING})),
    },
    required=["goals"],
)
NUDGES: Json = _object(
    {
        "nudges": _array(_object({"event_name": _STRING, "prediction": _NUMBER})),
        "goal": _STRING,
        "user_id": _STRING,
    }
)
SUBSCRIBED_EVENT: Json = _object(
    {
        "sequence": _COUNT,
        "namespace": _STRING,
        "event_name": _STRING,
        "user_id": _STRING,
        "user_hash": _STRING,
        "value": _NUMBER,
        "datetime": {"type": "string", "format": "date-time"},
        "replayed": {"type": "boolean"},
        "dropped": _COUNT,
    },
    required=["sequence", "namespace", "event_name", "user_hash", "replayed", "dropped"],
)
FEATURE_SPECS: Json = _object(
    {"featureSpecs": _array(FEATURE_SPEC), "version": _COUNT, **_NEXT_PAGE},
    required=["featureSpecs", "version"],
)
FEATURES: Json = _object(
    {
        "features": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "variants": {"type": "object", "additionalProperties": _STRING},
    },
    required=["features"],  # variants only when a flag answers one
)
FEATURE_SPEC_HISTORY: Json = _object(
    {
        "changes": _array(
            _object(
                {
                    "time": _STRING | {"format": "date-time", "nullable": True},
                    "token_id": _STRING,
                    "old_spec": {"allOf": [FEATURE_SPEC], "nullable": True},
                    "new_spec": {"allOf": [FEATURE_SPEC], "nullable": True},
                }
            )
        ),
        **_NEXT_PAGE,
    },
    required=["changes"],
)

# Query parameters that are not the request's fields.
_BASE64_JSON: Json = {"type": "string", "maxLength": 4_000}  # both in a request line of 8 KiB
FEATURES_QUERY: tuple[Json, ...] = tuple(
    {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"base64 of a JSON object: {what}",
        "schema": _BASE64_JSON,
    }
    for name, what in (
        ("user_obj", 'the user (its "user_id" makes rollouts sticky)'),
        ("context_obj", 'the context ("feature" counts a usage; "namespace")'),
    )
)
