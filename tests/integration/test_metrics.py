"""Metrics: the exposition text of each registry after known calls and events."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from support.in_process import local_settings, running, weekly_counters
from support.metrics import samples
from support.worked_example import as_protos

from kimball_grpc.config.settings import Settings
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

METHOD = "/kimball.v1.KimballService/"


@pytest.fixture
def settings(tmp_path) -> Settings:
    return local_settings(
        tmp_path,
        kubernetes_memory_limit=8 * 1024**3,
        counter_config=weekly_counters("^w_", 16, 0.01),
    )


def at(year: int, month: int, day: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime(year, month, day, 12, tzinfo=UTC))
    return stamp


async def worked_example(stub) -> None:
    """The worked example (support/worked_example.py), u6 logging in in ISO week 2024-W01."""
    events = as_protos("w_login", datetime=at(2024, 1, 3))
    await stub.TrackEvents(pb.TrackEventsRequest(events=events))


async def test_main_registry_counts_calls_counters_and_event_time(server, stub) -> None:
    await worked_example(stub)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetPredictions(pb.GetPredictionsRequest(events=["nope"]))
    await stub.GetPredictions(pb.GetPredictionsRequest())
    got = samples(server.metrics.registry)
    # global, feature_1, goal_1, w_login and its week
    assert got[("kimball_counters", ())] == 5
    ok = (("code", "OK"), ("method", METHOD + "GetPredictions"))
    bad = (("code", "INVALID_ARGUMENT"), ("method", METHOD + "GetPredictions"))
    assert got[("kimball_grpc_requests_total", ok)] == 1
    assert got[("kimball_grpc_requests_total", bad)] == 1
    track = (("code", "OK"), ("method", METHOD + "TrackEvents"))
    assert got[("kimball_grpc_requests_total", track)] == 1
    duration = (("method", METHOD + "GetPredictions"),)
    assert got[("kimball_grpc_request_duration_seconds_count", duration)] == 2
    assert got[("kimball_event_add_duration_microseconds_count", ())] == 1
    assert got[("kimball_event_add_duration_microseconds_sum", ())] > 0
    assert got[("kimball_persist_counters_managed", ())] == 0
    assert 0 < got[("memory_remaining_bytes", ())] < 8 * 1024**3
    assert got[("process_resident_memory_bytes", ())] > 0


async def test_counters_registry(server, stub) -> None:
    await worked_example(stub)
    got = samples(server.metrics.counters_registry)
    named = {
        dict(labels)["name"]: value
        for (name, labels), value in got.items()
        if name == "kimball_counter"
    }
    assert named == {"global_counter": 6, "feature_1": 2, "goal_1": 4, "w_login": 1}
    weekly = (
        ("kimball_namespace", "default"),
        ("name", "w_login"),
        ("week", "1"),
        ("year", "2024"),
    )
    assert got[("kimball_counter_weekly", weekly)] == 1


async def test_predictions_registry(server, stub) -> None:
    await worked_example(stub)
    got = samples(server.metrics.predictions_registry)
    labels = (("event", "feature_1"), ("goal", "goal_1"), ("kimball_namespace", "default"))
    assert got == {("kimball_bayes_prediction", labels): 0.5}


async def test_each_server_has_its_own_registries(server, stub, tmp_path) -> None:
    async with running(local_settings(tmp_path / "other")) as other:
        await worked_example(stub)
        assert samples(other.metrics.registry)[("kimball_counters", ())] == 0
        # No memory limit configured: nothing to subtract from, no series.
        assert ("memory_remaining_bytes", ()) not in samples(other.metrics.registry)
        assert other.metrics.registry is not server.metrics.registry
