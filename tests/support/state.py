"""Known traffic for a server, and everything a user can read back from it: what tests
compare before and after a restart, a crash or a backend outage."""

from __future__ import annotations

from kimball_grpc.codec.state_codec import state_in_steps
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.steps import finish
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc


def event(name: str, user: str, namespace: str = "shop", **fields: object) -> pb.Event:
    return pb.Event(namespace=namespace, event_name=name, user_id=user, **fields)


async def feed(stub: pb_grpc.KimballServiceStub, users: range, namespace: str = "shop") -> None:
    """One batch: each user views (value 1.5), every third one buys too (the goal)."""
    events = []
    for u in users:
        events.append(event("view", f"user-{u}", namespace, value=1.5))
        if u % 3 == 0:
            events.append(event("buy", f"user-{u}", namespace, ensure_goal=True))
    await stub.TrackEvents(pb.TrackEventsRequest(events=events))


async def state_of(stub: pb_grpc.KimballServiceStub) -> dict[str, object]:
    """Everything a user can read back: counters with their tallies, goals, namespaces."""
    namespaces = list((await stub.ListNamespaces(pb.ListNamespacesRequest())).namespaces)
    out: dict[str, object] = {"namespaces": namespaces}
    for ns in namespaces:
        counts = await stub.GetAnalytics(pb.GetAnalyticsRequest(namespace=ns))
        goals = await stub.ListGoals(pb.ListGoalsRequest(namespace=ns))
        out[ns] = (sorted(c.SerializeToString(deterministic=True) for c in counts.counts), goals)
    return out


def encoded_state(engine: Engine) -> bytes:
    """The engine's whole state as a snapshot holds it, encoded at once."""
    freeze = engine.freeze()
    try:
        return b"".join(finish(state_in_steps(freeze)))
    finally:
        engine.thaw()
