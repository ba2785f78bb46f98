"""Metrics: the exposition text of each registry after known calls and events."""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from importlib.metadata import version

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from support.in_process import local_settings, running, weekly_counters
from support.metrics import samples
from support.worked_example import as_protos

from kimball_grpc.config.settings import Settings
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

SERVICE = "kimball.v1.KimballService"


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
    predictions = grpc_labels("GetPredictions")
    assert got[("grpc_server_started_total", predictions)] == 2
    assert got[("grpc_server_handled_total", with_code(predictions, "OK"))] == 1
    assert got[("grpc_server_handled_total", with_code(predictions, "INVALID_ARGUMENT"))] == 1
    assert got[("grpc_server_handling_seconds_count", predictions)] == 2
    # Messages are counted for streams only (a unary call has one each way).
    assert got[("grpc_server_msg_received_total", predictions)] == 0
    track = grpc_labels("TrackEvents")
    assert got[("grpc_server_handled_total", with_code(track, "OK"))] == 1
    assert got[("kimball_event_add_duration_seconds_count", ())] == 1
    assert 0 < got[("kimball_event_add_duration_seconds_sum", ())] < 1
    assert got[("kimball_persist_counters_managed", ())] == 0
    assert 0 < got[("kimball_memory_remaining_bytes", ())] < 8 * 1024**3
    assert got[("process_resident_memory_bytes", ())] > 0
    build = (("python_version", platform.python_version()), ("version", version("kimball")))
    assert got[("kimball_build_info", build)] == 1


def grpc_labels(method: str, grpc_type: str = "unary", service: str = SERVICE) -> tuple:
    """The sorted labels of a method's grpc_server_* series."""
    return (("grpc_method", method), ("grpc_service", service), ("grpc_type", grpc_type))


def with_code(labels: tuple, code: str) -> tuple:
    return tuple(sorted((*labels, ("grpc_code", code))))


async def test_original_names_prometheus_flags_are_kept_on_metrics_counters(server, stub):
    """kimball_event_add_duration_microseconds (a unit other than seconds) and
    memory_remaining_bytes (no prefix) as the original served them, beside kimball_counter;
    /metrics has the same figures under conventional names only."""
    await worked_example(stub)
    main = samples(server.metrics.registry)
    legacy = samples(server.metrics.counters_registry)
    assert legacy[("kimball_event_add_duration_microseconds_count", ())] == 1
    per_event_us = legacy[("kimball_event_add_duration_microseconds_sum", ())]
    per_event_s = main[("kimball_event_add_duration_seconds_sum", ())]
    assert per_event_us == pytest.approx(per_event_s * 1e6)
    assert 0 < legacy[("memory_remaining_bytes", ())] < 8 * 1024**3
    assert not any(
        name.startswith(("memory_", "kimball_event_add_duration_micro")) for name, _ in main
    )


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
        assert ("kimball_memory_remaining_bytes", ()) not in samples(other.metrics.registry)
        assert other.metrics.registry is not server.metrics.registry
