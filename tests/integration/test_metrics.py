"""Metrics (SPEC section 7): the exposition text after known calls and events."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kimball_grpc.config.settings import Settings
from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

METHOD = "/kimball.v1.KimballService/"


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    """Every sample of a registry's exposition text, by name and sorted labels."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def settings(tmp_path) -> Settings:
    weekly = [
        {
            "pattern": "^w_",
            "type": "bloom_scalable",
            "size": 16,
            "error_probability": 0.01,
            "date_cohort": "weekly",
        }
    ]
    return Settings(
        grpc_host="127.0.0.1",
        grpc_port=0,
        api_auth=False,
        kubernetes_memory_limit=8 * 1024**3,
        counter_config=CounterConfig.from_mappings(weekly),
        data_dir=tmp_path,
    )


def at(year: int, month: int, day: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime(year, month, day, 12, tzinfo=UTC))
    return stamp


async def spec_example(stub) -> None:
    events = [pb.Event(event_name="feature_1", user_id=u) for u in ("u1", "u2")]
    events += [
        pb.Event(event_name="goal_1", user_id=u, ensure_goal=True) for u in ("u1", "u3", "u4", "u5")
    ]
    events += [pb.Event(event_name="w_login", user_id="u6", datetime=at(2024, 1, 3))]
    await stub.TrackEvents(pb.TrackEventsRequest(events=events))


async def test_main_registry_counts_calls_counters_and_event_time(server, stub) -> None:
    await spec_example(stub)
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
    await spec_example(stub)
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
    await spec_example(stub)
    got = samples(server.metrics.predictions_registry)
    labels = (("event", "feature_1"), ("goal", "goal_1"), ("kimball_namespace", "default"))
    assert got == {("kimball_bayes_prediction", labels): 0.5}


async def test_each_server_has_its_own_registries(server, stub, tmp_path) -> None:
    from kimball_grpc.app import start_server

    other = await start_server(
        Settings(grpc_host="127.0.0.1", grpc_port=0, api_auth=False, data_dir=tmp_path / "other")
    )
    try:
        await other.wait_ready()
        await spec_example(stub)
        assert samples(other.metrics.registry)[("kimball_counters", ())] == 0
        # No memory limit configured: nothing to subtract from, no series.
        assert ("memory_remaining_bytes", ()) not in samples(other.metrics.registry)
        assert other.metrics.registry is not server.metrics.registry
    finally:
        await other.stop(grace=None)
