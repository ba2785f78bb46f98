"""The worked example of the original API's documentation, which several tests replay.

Users u1 and u2 use ``feature_1``; u1, u3, u4 and u5 reach the goal ``goal_1`` (so of its
users only u1 used ``feature_1`` before); a sixth user, u6, does one event of the test's
choosing. Then the global counter counts 6 users, ``goal_1`` 4 with ``{feature_1: 1}`` as
its single event counts, ``feature_1`` 2, and P(goal_1 | feature_1) is 0.5.
"""

from __future__ import annotations

from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

GOAL = "goal_1"
SIXTH_USER = "u6"
# (event name, user id, whether the event is the goal) of users u1 to u5.
EVENTS: tuple[tuple[str, str, bool], ...] = (
    ("feature_1", "u1", False),
    ("feature_1", "u2", False),
    *((GOAL, user, True) for user in ("u1", "u3", "u4", "u5")),
)


def as_protos(sixth_event: str, **fields: object) -> list[pb.Event]:
    """The example as ``kimball.v1`` events; u6's is named ``sixth_event``, with ``fields``."""
    events = [
        pb.Event(event_name=name, user_id=user, ensure_goal=goal) for name, user, goal in EVENTS
    ]
    return [*events, pb.Event(event_name=sixth_event, user_id=SIXTH_USER, **fields)]


def as_json(sixth_event: str, **fields: object) -> list[dict[str, object]]:
    """The example as the REST API's JSON events; u6's is named ``sixth_event``, with ``fields``."""
    events: list[dict[str, object]] = [
        {"event_name": name, "user_id": user, **({"ensure_goal": True} if goal else {})}
        for name, user, goal in EVENTS
    ]
    return [*events, {"event_name": sixth_event, "user_id": SIXTH_USER, **fields}]
