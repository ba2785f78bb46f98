"""Paged reads (AIP-158) over gRPC and REST: page_size, page_token, next_page_token, the
analytics name prefix, and the whole answer's size limit, on real loopback servers and
through a sidecar."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from support.grpc_errors import error_metadata
from support.in_process import gateway_of, local_settings, rest_client, running, weekly_counters

from gateway.server import network_channel
from kimball_grpc.app import RunningServer
from kimball_grpc.config.settings import Mode, Settings
from kimball_grpc.core.paging import ENVELOPE_BYTES
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.sidecar.server import start_sidecar

WEEKLY = weekly_counters("^w", 100, 0.01)  # events named w... get weekly counters too
# An answer limit a few dozen counters pass (a server's setting starts at 4 MiB; tests
# build their Settings directly to reach it cheaply).
SMALL_LIMIT = ENVELOPE_BYTES + 2_000
# Two ISO weeks, so that weekly counters come in pairs.
WEEKS = ("2024-01-03T12:00:00Z", "2024-01-10T12:00:00Z")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return local_settings(tmp_path, counter_config=WEEKLY)


def event(name: str, namespace: str = "", when: str = "") -> pb.Event:
    message = pb.Event(namespace=namespace, event_name=name, user_id="u1")
    if when:
        message.datetime.FromJsonString(when)
    return message


async def track(stub: pb_grpc.KimballServiceStub, names: list[str], namespace: str = "") -> None:
    """Each name as an event in each of WEEKS (weekly counters for names starting with w)."""
    events = [event(n, namespace, when) for n in names for when in WEEKS]
    await stub.TrackEvents(pb.TrackEventsRequest(events=events))


def counter_id(counter: pb.Counter) -> tuple[str, int, int, int]:
    return (counter.name, counter.type, counter.year, counter.week)


async def analytics_pages(
    stub: pb_grpc.KimballServiceStub, **fields: object
) -> list[pb.GetAnalyticsResponse]:
    """Every page of GetAnalytics with ``fields``, following next_page_token."""
    request = pb.GetAnalyticsRequest(**fields)
    pages = []
    while True:
        pages.append(await stub.GetAnalytics(request))
        if not pages[-1].next_page_token:
            return pages
        assert len(pages) < 1000, "paging does not end"
        request.page_token = pages[-1].next_page_token


MIXED = [f"w{i:02d}" for i in range(12)] + [f"e{i:02d}" for i in range(15)]


async def test_analytics_pages_hold_every_counter_once_in_order(stub) -> None:
    await track(stub, MIXED)
    whole = await stub.GetAnalytics(pb.GetAnalyticsRequest())
    assert len(whole.counts) == 1 + 27 + 12 * 2  # global, named, weekly
    assert whole.next_page_token == ""

    pages = await analytics_pages(stub, page_size=7)
    assert [len(p.counts) for p in pages] == [7] * 7 + [3]
    assert all(p.next_page_token for p in pages[:-1])
    paged = [c for p in pages for c in p.counts]
    assert paged == list(whole.counts)
    kinds = [c.type for c in paged]
    assert kinds == sorted(kinds)  # global, then named, then weekly


async def test_the_name_prefix_keeps_the_counters_of_those_events(stub) -> None:
    await track(stub, [*MIXED, "other"])
    whole = await stub.GetAnalytics(pb.GetAnalyticsRequest(name_prefix="w0"))
    assert {c.name for c in whole.counts} == {f"w0{i}" for i in range(10)}
    assert len(whole.counts) == 10 * 3  # named and two weeks each; no global counter
    pages = await analytics_pages(stub, name_prefix="w0", page_size=4)
    assert [c for p in pages for c in p.counts] == list(whole.counts)
    nothing = await stub.GetAnalytics(pb.GetAnalyticsRequest(name_prefix="zzz"))
    assert (list(nothing.counts), nothing.next_page_token) == ([], "")


async def test_names_arriving_while_paging_are_neither_repeated_nor_shift_pages(stub) -> None:
    await track(stub, [f"e{i:02d}" for i in range(0, 40, 2)])  # e00, e02, ... e38
    first = await stub.GetAnalytics(pb.GetAnalyticsRequest(page_size=10))
    assert first.counts[-1].name == "e16"
    # New names behind the cursor and ahead of it, and a new global user.
    await track(stub, [f"e{i:02d}" for i in range(1, 40, 2)])
    rest = await analytics_pages(stub, page_size=10, page_token=first.next_page_token)
    names = [c.name for p in [first, *rest] for c in p.counts]
    assert len(names) == len(set(names))
    behind = {f"e{i:02d}" for i in range(1, 16, 2)}
    ahead = {f"e{i:02d}" for i in range(17, 40, 2)}
    assert not behind & set(names)
    assert set(names) == {"global_counter"} | {f"e{i:02d}" for i in range(0, 40, 2)} | ahead
    assert names == sorted(names, key=lambda n: (n != "global_counter", n))


async def test_every_list_call_pages(stub) -> None:
    goals = [f"g{i:02d}" for i in range(11)]
    for goal in goals:
        await stub.CreateGoal(pb.CreateGoalRequest(goal_name=goal))
    for namespace in [f"ns{i:02d}" for i in range(8)]:
        await track(stub, ["x"], namespace)
    specs = [f"flag{i:02d}" for i in range(9)]
    for name in specs:
        await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name=name)))

    async def every(method, request, field: str) -> list[list[str]]:
        pages = []
        while True:
            answer = await method(request)
            pages.append([getattr(i, "name", i) for i in getattr(answer, field)])
            if not answer.next_page_token:
                return pages
            request.page_token = answer.next_page_token

    listed = await every(stub.ListGoals, pb.ListGoalsRequest(page_size=5), "goals")
    assert listed == [goals[:5], goals[5:10], goals[10:]]
    namespaces = await every(
        stub.ListNamespaces, pb.ListNamespacesRequest(page_size=3), "namespaces"
    )
    assert [n for p in namespaces for n in p] == ["default"] + [f"ns{i:02d}" for i in range(8)]
    assert [len(p) for p in namespaces] == [3, 3, 3]
    flags = await every(stub.ListFeatureSpecs, pb.ListFeatureSpecsRequest(page_size=4), "specs")
    assert flags == [specs[:4], specs[4:8], specs[8:]]

    whole = await stub.ListFeatureSpecs(pb.ListFeatureSpecsRequest())
    page = await stub.ListFeatureSpecs(pb.ListFeatureSpecsRequest(page_size=2))
    assert (page.version, page.fingerprint) == (whole.version, whole.fingerprint)
    assert whole.next_page_token == ""


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_bad_page_sizes_and_tokens_are_refused_naming_the_field(stub) -> None:
    await track(stub, ["a", "b", "c"])
    token = (await stub.GetAnalytics(pb.GetAnalyticsRequest(page_size=1))).next_page_token
    assert token

    error = await refused(stub.GetAnalytics(pb.GetAnalyticsRequest(page_size=-1)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in error.details()
    assert error_metadata(error) == {"page_size": "-1"}

    foreign = [
        stub.GetAnalytics(pb.GetAnalyticsRequest(page_token="bm90IG91cnM")),
        stub.GetAnalytics(pb.GetAnalyticsRequest(page_token="%%%")),
        stub.GetAnalytics(pb.GetAnalyticsRequest(namespace="shop", page_token=token)),
        stub.GetAnalytics(pb.GetAnalyticsRequest(name_prefix="a", page_token=token)),
        stub.ListGoals(pb.ListGoalsRequest(page_token=token)),
        stub.ListNamespaces(pb.ListNamespacesRequest(page_token=token)),
        stub.ListFeatureSpecs(pb.ListFeatureSpecsRequest(page_token=token)),
    ]
    for call in foreign:
        error = await refused(call)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("page_token ")
        assert list(error_metadata(error)) == ["page_token"]

    error = await refused(stub.GetAnalytics(pb.GetAnalyticsRequest(name_prefix="a\x00")))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "name_prefix" in error.details()
    # The same token still works where it belongs.
    again = await stub.GetAnalytics(pb.GetAnalyticsRequest(page_size=1, page_token=token))
    assert again.counts[0].name == "a"


# --- REST ---------------------------------------------------------------------------


async def get(http, path: str, **params: object) -> tuple[int, dict]:
    async with http.get(path, params=params or None) as response:
        return response.status, await response.json()


async def rest_pages(http, path: str, **params: object) -> list[dict]:
    pages = []
    while True:
        status, body = await get(http, path, **params)
        assert status == 200, body
        pages.append(body)
        if "next_page_token" not in body:
            return pages
        assert body["next_page_token"]
        params["page_token"] = body["next_page_token"]


async def test_rest_takes_paging_as_query_parameters(stub, http) -> None:
    await track(stub, MIXED)
    status, whole = await get(http, "/v0/analytics")
    assert status == 200
    assert set(whole) == {"counts"}  # the original's shape, no paging key
    pages = await rest_pages(http, "/v0/analytics", page_size=10)
    assert [len(p["counts"]) for p in pages] == [10] * 5 + [2]
    assert [c for p in pages for c in p["counts"]] == whole["counts"]

    status, prefixed = await get(http, "/v0/analytics", name_prefix="e1")
    assert status == 200
    assert [c["name"] for c in prefixed["counts"]] == [f"e1{i}" for i in range(5)]

    for goal in ("g1", "g2", "g3"):
        await stub.CreateGoal(pb.CreateGoalRequest(goal_name=goal))
    goals = await rest_pages(http, "/v0/goals", page_size=2)
    assert goals == [
        {"goals": ["g1", "g2"], "next_page_token": goals[0]["next_page_token"]},
        {"goals": ["g3"]},
    ]
    status, namespaces = await get(http, "/v0/namespaces", page_size=1)
    assert (status, namespaces) == (200, {"namespaces": ["default"]})
    for name in ("b", "a"):
        await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name=name)))
    specs = await rest_pages(http, "/v0/featureSpecs", page_size=1)
    assert [[s["name"] for s in p["featureSpecs"]] for p in specs] == [["a"], ["b"]]
    assert {p["version"] for p in specs} == {2}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page_size": "-1"}, "page_size"),
        ({"page_size": "many"}, "page_size"),
        ({"page_token": "nope"}, "page_token"),
        ({"name_prefix": "a\x07"}, "name_prefix"),
    ],
    ids=["negative", "not-a-number", "bad-token", "control-character"],
)
async def test_rest_refuses_bad_paging_with_400_naming_the_parameter(
    http, params: dict, field: str
) -> None:
    status, body = await get(http, "/v0/analytics", **params)
    assert status == 400
    assert field in body["error"]["what"]


async def test_rest_refuses_a_token_of_another_route(stub, http) -> None:
    await track(stub, ["a", "b"])
    _, first = await get(http, "/v0/analytics", page_size=1)
    status, body = await get(http, "/v0/goals", page_token=first["next_page_token"])
    assert status == 400
    assert body["error"]["what"].startswith("page_token belongs to another request")
    assert "page_token" in body["error"]


# Three days and their ISO weeks; 2027-01-01, a Friday, is in week 53 of ISO year 2026.
ISO_WEEKS = {
    "2026-01-07T12:00:00Z": (2026, 2),
    "2026-03-04T12:00:00Z": (2026, 10),
    "2027-01-01T12:00:00Z": (2026, 53),
}


async def test_rest_names_weekly_counters_as_the_original_and_grpc_keeps_them_apart(
    stub, http
) -> None:
    """v0 clients parse "<event> <year><week>", the week not padded; gRPC has the parts."""
    events = [event("welcome", when=when) for when in ISO_WEEKS]
    events += [event("wx", when="2024-12-30T12:00:00Z"), event("a")]  # 2025-W01
    await stub.TrackEvents(pb.TrackEventsRequest(events=events))
    answer = await stub.GetAnalytics(pb.GetAnalyticsRequest(name_prefix="welcome"))
    assert [(c.name, c.type, c.year, c.week) for c in answer.counts] == [
        ("welcome", pb.COUNTER_TYPE_NAMED, 0, 0),
        *(("welcome", pb.COUNTER_TYPE_WEEKLY, *week) for week in ISO_WEEKS.values()),
    ]

    status, whole = await get(http, "/v0/analytics")
    assert status == 200
    weekly = [c for c in whole["counts"] if c["type"] == "weekly"]
    assert [(c["name"], c["year"], c["week"], c["count"]) for c in weekly] == [
        ("welcome 20262", 2026, 2, 1),
        ("welcome 202610", 2026, 10, 1),
        ("welcome 202653", 2026, 53, 1),
        ("wx 20251", 2025, 1, 1),
    ]
    assert all(
        set(c) == {"name", "type", "count", "event_counts", "single_event_counts", "value"}
        for c in whole["counts"]
        if c["type"] != "weekly"
    )

    # Pages and the name prefix (of the event) as before.
    pages = await rest_pages(http, "/v0/analytics", page_size=1, name_prefix="welcome")
    assert [c["name"] for p in pages for c in p["counts"]] == [
        "welcome",
        "welcome 20262",
        "welcome 202610",
        "welcome 202653",
    ]
    pages = await rest_pages(http, "/v0/analytics", page_size=2)
    assert [c for p in pages for c in p["counts"]] == whole["counts"]


# --- the whole answer's size limit --------------------------------------------------


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server whose answers are at most SMALL_LIMIT bytes."""
    settings = local_settings(tmp_path / "small", max_response_bytes=SMALL_LIMIT)
    async with running(settings) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            await track(pb_grpc.KimballServiceStub(channel), [f"event_{i:03d}" for i in range(150)])
        yield server


def too_large(error: grpc.aio.AioRpcError) -> None:
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_response_bytes" in error.details()
    assert "page_size" in error.details()
    assert error_metadata(error) == {"limit": "max_response_bytes"}


async def test_a_whole_answer_past_the_limit_is_refused_and_pages_still_hold_it_all(
    small,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small.grpc_port}") as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        too_large(await refused(stub.GetAnalytics(pb.GetAnalyticsRequest())))
        pages = await analytics_pages(stub, page_size=10_000)
        assert len(pages) > 1  # cut by size: each page holds fewer than asked
        assert all(p.ByteSize() <= SMALL_LIMIT for p in pages)
        counts = [c.name for p in pages for c in p.counts]
        assert counts == ["global_counter"] + [f"event_{i:03d}" for i in range(150)]
        # A small page of the same read fits.
        assert len((await stub.GetAnalytics(pb.GetAnalyticsRequest(page_size=5))).counts) == 5


async def test_rest_answers_429_for_a_whole_answer_past_the_limit(small) -> None:
    async with gateway_of(small) as gateway, rest_client(gateway) as http:
        status, body = await get(http, "/v0/analytics")
        assert status == 429
        assert "page_size" in body["error"]["what"]
        assert body["error"]["limit"] == "max_response_bytes"
        pages = await rest_pages(http, "/v0/analytics", page_size=10_000)
        assert sum(len(p["counts"]) for p in pages) == 151


# --- through a sidecar --------------------------------------------------------------


async def test_paging_and_the_limit_pass_through_a_sidecar(small, tmp_path: Path) -> None:
    sidecar_settings = local_settings(
        tmp_path / "sidecar",
        mode=Mode.SIDECAR,
        analytics_host=f"127.0.0.1:{small.grpc_port}",
        max_response_bytes=SMALL_LIMIT,
    )
    sidecar = await start_sidecar(sidecar_settings)
    try:
        await sidecar.wait_ready()
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{small.grpc_port}") as direct,
        ):
            stub = pb_grpc.KimballServiceStub(channel)
            too_large(await refused(stub.GetAnalytics(pb.GetAnalyticsRequest())))
            via_sidecar = await analytics_pages(stub, page_size=40)
            api = await analytics_pages(pb_grpc.KimballServiceStub(direct), page_size=40)
            assert via_sidecar == api
            assert sum(len(p.counts) for p in via_sidecar) == 151
            error = await refused(stub.ListGoals(pb.ListGoalsRequest(page_size=-5)))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert error_metadata(error) == {"page_size": "-5"}
        async with gateway_of(sidecar) as gateway, rest_client(gateway) as http:
            status, body = await get(http, "/v0/analytics")
            assert status == 429 and "page_size" in body["error"]["what"]
            pages = await rest_pages(http, "/v0/analytics", page_size=100)
            assert sum(len(p["counts"]) for p in pages) == 151
    finally:
        await sidecar.stop(grace=None)


async def test_a_sidecar_that_takes_less_than_its_api_server_sends_says_so(
    server, tmp_path: Path
) -> None:
    names = [f"event_{i:03d}" for i in range(400)]  # about 15 KB: more than the sidecar takes
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        await track(pb_grpc.KimballServiceStub(channel), names)
    sidecar = await start_sidecar(
        local_settings(
            tmp_path / "sidecar",
            mode=Mode.SIDECAR,
            analytics_host=f"127.0.0.1:{server.grpc_port}",
            max_response_bytes=SMALL_LIMIT,
        )
    )
    try:
        await sidecar.wait_ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
            stub = pb_grpc.KimballServiceStub(channel)
            error = await refused(stub.GetAnalytics(pb.GetAnalyticsRequest()))
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "this sidecar" in error.details() and "page_size" in error.details()
            assert error_metadata(error) == {"limit": "max_response_bytes"}
            small_pages = await analytics_pages(stub, page_size=20)
            assert sum(len(p.counts) for p in small_pages) == 401
    finally:
        await sidecar.stop(grace=None)


async def test_a_gateway_that_takes_less_than_its_server_sends_says_so(server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        await track(pb_grpc.KimballServiceStub(channel), [f"event_{i:03d}" for i in range(400)])
    channel = network_channel(f"127.0.0.1:{server.grpc_port}", SMALL_LIMIT)
    async with gateway_of(server, channel) as gateway, rest_client(gateway) as http:
        status, body = await get(http, "/v0/analytics")
        assert status == 429
        assert "this gateway" in body["error"]["what"] and "page_size" in body["error"]["what"]
        assert body["error"]["limit"] == "max_response_bytes"
        pages = await rest_pages(http, "/v0/analytics", page_size=50)
        assert sum(len(p["counts"]) for p in pages) == 401


async def test_a_sidecar_pages_its_copy_of_the_feature_specs(server, tmp_path: Path) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        api = pb_grpc.KimballServiceStub(channel)
        for name in ("c", "a", "b"):
            await api.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name=name)))
        whole = await api.ListFeatureSpecs(pb.ListFeatureSpecsRequest())
    sidecar = await start_sidecar(
        local_settings(
            tmp_path / "sidecar",
            mode=Mode.SIDECAR,
            analytics_host=f"127.0.0.1:{server.grpc_port}",
        )
    )
    try:
        await sidecar.wait_ready()
        from support.polling import until

        await until(lambda: len(sidecar.specs.flags.specs) == 3, "the sidecar's copy")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
            stub = pb_grpc.KimballServiceStub(channel)
            first = await stub.ListFeatureSpecs(pb.ListFeatureSpecsRequest(page_size=2))
            second = await stub.ListFeatureSpecs(
                pb.ListFeatureSpecsRequest(page_size=2, page_token=first.next_page_token)
            )
            assert [s.name for s in first.specs] == ["a", "b"]
            assert ([s.name for s in second.specs], second.next_page_token) == (["c"], "")
            assert second.fingerprint == whole.fingerprint
    finally:
        await sidecar.stop(grace=None)
