"""The original ``/v0`` REST routes, each onto the one ``kimball.v1.KimballService`` method
that serves it: by path, then by HTTP method."""

from __future__ import annotations

V0_PATHS: dict[str, dict[str, str]] = {
    "/v0/analytics": {"POST": "TrackEvents", "GET": "GetAnalytics"},
    "/v0/analytics:stream": {"POST": "StreamEvents"},
    "/v0/goals": {"POST": "CreateGoal", "GET": "ListGoals"},
    "/v0/namespaces": {"GET": "ListNamespaces"},
    "/v0/predictions": {"GET": "GetPredictions"},
    "/v0/nudges": {"GET": "GetNudges"},
    "/v0/featureSpecs": {"POST": "PutFeatureSpec", "GET": "ListFeatureSpecs"},
    "/v0/featureSpecs/{name}": {"GET": "GetFeatureSpec", "DELETE": "DeleteFeatureSpec"},
    "/v0/featureSpecs/{name}/history": {"GET": "GetFeatureSpecHistory"},
    "/v0/features": {"GET": "EvaluateFeatures"},
    "/v0/events:stream": {"GET": "Subscribe"},
}

# (HTTP method, path) -> gRPC method name.
V0_ROUTES: dict[tuple[str, str], str] = {
    (verb, path): method for path, verbs in V0_PATHS.items() for verb, method in verbs.items()
}
