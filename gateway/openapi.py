"""The OpenAPI 3 document of the REST API.

Paths, methods and query parameters are read from the route table (the
protos); the bodies and answers are the original API's JSON shapes, the ones
``shapes.py`` produces, described here once.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from gateway.routes import Route, parameter_name
from kimball_grpc.core.limits import MAX_NAME_LENGTH

Json = dict[str, Any]

# As kimball_grpc.core.events.check_name: no control characters, no unpaired surrogates.
_NAME: Json = {
    "type": "string",
    "maxLength": MAX_NAME_LENGTH,
    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f\\ud800-\\udfff]*$",
}
_COUNT: Json = {"type": "integer", "minimum": 0}
_NUMBER: Json = {"type": "number"}

SCHEMAS: Json = {
    "Event": {
        "type": "object",
        "required": ["event_name", "user_id"],
        "additionalProperties": False,
        # null is taken as "not given", as protobuf's JSON mapping does.
        "properties": {
            "event_name": _NAME | {"minLength": 1},
            "user_id": _NAME | {"minLength": 1},
            "namespace": _NAME | {"nullable": True},
            "value": _NUMBER | {"minimum": -1e15, "maximum": 1e15, "nullable": True},
            "ensure_goal": {"type": "boolean", "nullable": True},
            "datetime": {"type": "string", "format": "date-time", "nullable": True},
        },
    },
    "Counter": {
        "type": "object",
        "required": ["name", "type", "count", "event_counts", "single_event_counts", "value"],
        "properties": {
            "name": {"type": "string"},
            "type": {"type": "string", "enum": ["internal", "named", "weekly"]},
            "count": _COUNT,
            "event_counts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["events", "count"],
                    "properties": {
                        "events": {"type": "array", "items": {"type": "string"}},
                        "count": _COUNT,
                    },
                },
            },
            "single_event_counts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "count"],
                    "properties": {"name": {"type": "string"}, "count": _COUNT},
                },
            },
            "value": {"type": "object", "required": ["sum"], "properties": {"sum": _NUMBER}},
            "year": {"type": "integer"},
            "week": {"type": "integer", "minimum": 1, "maximum": 53},
        },
    },
    "FeatureSpec": {
        "type": "object",
        "description": "rollout_start and rollout_end: both or neither, end after start",
        "required": ["name"],
        "properties": {
            "name": _NAME | {"minLength": 1},
            "boolean": {"type": "boolean"},
            "rollout_start": {"type": "string", "format": "date-time"},
            "rollout_end": {"type": "string", "format": "date-time"},
            "user": {
                "type": "array",
                "maxItems": 100,
                "items": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["property", "comparator", "value"],
                            "properties": {
                                "property": _NAME | {"minLength": 1},
                                "comparator": {"type": "string", "enum": ["=", "in"]},
                                "value": {},
                            },
                        },
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
                "additionalProperties": {
                    "type": "object",
                    "required": ["bayes"],
                    "properties": {"bayes": _NUMBER | {"minimum": 0, "maximum": 1}},
                },
            },
            "yes": _NUMBER,
            "no": _NUMBER,
            "likelihood": _NUMBER,
            "probability": _NUMBER | {"minimum": 0, "maximum": 1},
            "note": {"type": "string"},
        },
        # External prediction targets add NAME_yes and NAME_no.
        "additionalProperties": _NUMBER,
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["what"],
                "properties": {"what": {"type": "string"}},
            }
        },
    },
    "Unauthorized": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _strings(key: str) -> Json:
    return {
        "type": "object",
        "required": [key],
        "properties": {key: {"type": "array", "items": {"type": "string"}}},
    }


# What each method answers on success (absent: 204, no body), and takes as a body.
ANSWERS: dict[str, Json] = {
    "GetAnalytics": {
        "type": "object",
        "required": ["counts"],
        "properties": {"counts": {"type": "array", "items": _ref("Counter")}},
    },
    "StreamEvents": {
        "type": "object",
        "required": ["accepted", "messages"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0},
            "messages": {"type": "integer", "minimum": 0},
        },
    },
    "ListGoals": _strings("goals"),
    "ListNamespaces": _strings("namespaces"),
    "GetPredictions": {
        "type": "object",
        "required": ["goals"],
        "properties": {
            "goals": {"type": "object", "additionalProperties": _ref("GoalPrediction")},
            # Only when an external prediction target was skipped or had answers dropped.
            "external_problems": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["target", "reason"],
                    "properties": {"target": {"type": "string"}, "reason": {"type": "string"}},
                },
            },
        },
    },
    "GetNudges": {
        "type": "object",
        "required": ["nudges", "goal", "user_id"],
        "properties": {
            "nudges": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["event_name", "prediction"],
                    "properties": {"event_name": {"type": "string"}, "prediction": _NUMBER},
                },
            },
            "goal": {"type": "string"},
            "user_id": {"type": "string"},
        },
    },
    "PutFeatureSpec": _ref("FeatureSpec"),
    "GetFeatureSpec": _ref("FeatureSpec"),
    "ListFeatureSpecs": {
        "type": "object",
        "required": ["featureSpecs", "version"],
        "properties": {
            "featureSpecs": {"type": "array", "items": _ref("FeatureSpec")},
            "version": {"type": "integer", "minimum": 0},
        },
    },
    "EvaluateFeatures": {
        "type": "object",
        "required": ["features"],
        "properties": {"features": {"type": "object", "additionalProperties": {"type": "boolean"}}},
    },
}
BODIES: dict[str, Json] = {
    "TrackEvents": {
        "oneOf": [
            _ref("Event"),
            {"type": "array", "items": _ref("Event"), "maxItems": 10_000},
            {
                "type": "object",
                "required": ["events"],
                "additionalProperties": False,
                "properties": {
                    "events": {"type": "array", "items": _ref("Event"), "maxItems": 10_000}
                },
            },
        ]
    },
    "CreateGoal": {
        "type": "object",
        "required": ["goal_name"],
        "additionalProperties": False,
        "properties": {
            "goal_name": _NAME | {"minLength": 1},
            "namespace": _NAME | {"nullable": True},
        },
    },
    "PutFeatureSpec": _ref("FeatureSpec"),
}
SUMMARIES = {
    "TrackEvents": 'Track events: one, {"events": [...]} or an array; all or nothing',
    "StreamEvents": "Track events as a stream of newline-delimited JSON batches",
    "GetAnalytics": "The counters of a namespace",
    "CreateGoal": "Mark an event name as a goal",
    "ListGoals": "The goals of a namespace",
    "ListNamespaces": "Every namespace that holds data",
    "GetPredictions": "Predictions: for every goal, for events, or for a user's events",
    "GetNudges": "The goal's events a user has not done, most predictive first",
    "PutFeatureSpec": "Create or replace a feature flag spec",
    "GetFeatureSpec": "One feature flag spec",
    "ListFeatureSpecs": "Every feature flag spec, by name",
    "DeleteFeatureSpec": "Delete a feature flag spec",
    "EvaluateFeatures": "Every feature flag for a user (counts a feature's usage)",
}
_BASE64_JSON: Json = {"type": "string", "maxLength": 4_000}  # both in a request line of 8 KiB
# Routes whose query is not their request's fields (gateway.shapes.QUERY_SHAPES).
QUERY_PARAMETERS: dict[str, list[Json]] = {
    "EvaluateFeatures": [
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
    ]
}
# Query parameters a route cannot do without (the rest are optional).
REQUIRED_PARAMETERS = {"GetNudges": {"goal", "user_id"}}


def _error(description: str, schema: str = "Error") -> Json:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _parameters(route: Route) -> list[Json]:
    if route.name in QUERY_PARAMETERS:
        return QUERY_PARAMETERS[route.name]
    parameters = []
    required = REQUIRED_PARAMETERS.get(route.name, set())
    for field in route.request_type.DESCRIPTOR.fields:
        schema: Json = _NAME if field.type == FieldDescriptor.TYPE_STRING else {"type": "string"}
        if f"{{{field.name}}}" in route.path:
            parameters.append(
                {"name": field.name, "in": "path", "required": True, "schema": schema}
            )
            continue
        if field.is_repeated:
            schema = {"type": "array", "items": schema, "maxItems": 1_000}
        parameters.append(
            {
                "name": parameter_name(field),
                "in": "query",
                "required": field.name in required,
                "schema": schema,
                "style": "form",
                "explode": True,
            }
        )
    return parameters


def _operation(route: Route) -> Json:
    wrong = _error(
        "A parameter or the body is wrong; nothing was changed. A request line over"
        " 8 KiB is refused by the HTTP server itself, in plain text."
    )
    wrong["content"]["text/plain"] = {"schema": {"type": "string"}}
    responses: Json = {
        "400": wrong,
        "401": _error("Missing or invalid authorization header", "Unauthorized"),
        "404": _error("Not found (a user with no events, a feature spec)"),
        "503": _error("Kimball's gRPC server is unavailable"),
    }
    answer = ANSWERS.get(route.name)
    if answer is None:
        responses["204"] = {"description": "Done"}
    else:
        responses["200"] = {
            "description": "OK",
            "content": {"application/json": {"schema": answer}},
        }
    operation: Json = {
        "operationId": route.name,
        "summary": SUMMARIES.get(route.name, route.name),
        "responses": responses,
    }
    if route.client_streaming:
        operation["requestBody"] = {
            "required": True,
            "description": "Newline-delimited JSON: per line, one batch, one event or an "
            "array of events, applied as it is read. A bad line ends the request with a 400 "
            "naming it (`message`, from 0) and saying what was accepted before it.",
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/plain": {"schema": {"type": "string"}},
            },
        }
        responses["415"] = _error("The body is not application/x-ndjson (or text/plain)")
    elif route.body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": BODIES[route.name]}},
        }
        responses["413"] = _error("The body is larger than 4 MiB")
        responses["415"] = _error("The body is not application/json")
    else:
        operation["parameters"] = _parameters(route)
    return operation


def openapi_document(routes: list[Route]) -> Json:
    """The OpenAPI 3 document of ``routes`` and the open health routes."""
    paths: Json = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.http_method.lower()] = _operation(route)
    text = {"description": "ok!", "content": {"text/plain": {"schema": {"type": "string"}}}}
    for path, summary in (("/alive", "Alive"), ("/ready", "Ready to serve")):
        paths[path] = {
            "get": {
                "operationId": summary.split()[0].lower(),
                "summary": summary,
                "security": [],
                "responses": {"200": text, "503": {"description": "Not ready"}},
            }
        }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Kimball API",
            "version": "v0",
            "description": "The original Kimball HTTP API, translated onto Kimball's gRPC API.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
