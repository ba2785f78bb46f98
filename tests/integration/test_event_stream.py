"""``GET /v0/events:stream``: the subscription stream as Server-Sent Events, read with an
HTTP client as a browser's fetch reads it, over the gateway's in-process channel and over
a network channel and a REST worker's intake channel (the ``rest`` fixture)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest
from support.in_process import gateway_of, local_settings, rest_client, started
from support.polling import until

from kimball_grpc.config.settings import Settings

TOKEN = "sse-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTE = "/v0/events:stream"
READ_SECONDS = 10.0


@pytest.fixture
def settings(tmp_path) -> Settings:
    return local_settings(
        tmp_path, api_auth=True, api_auth_tokens=(TOKEN,), max_subscribers=2, max_streams=3
    )


@dataclass
class Sse:
    """One Server-Sent Event as a client parses it."""

    event: str
    id: str | None
    data: dict


class SseReader:
    """The events of an open ``text/event-stream`` answer, parsed as EventSource does;
    comment lines are counted (heartbeats)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments = 0

    async def next(self) -> Sse | None:
        """The next event; None when the answer ends."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(READ_SECONDS):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\n")
                if not line:
                    if "data" in fields:
                        return Sse(
                            fields.get("event", "message"),
                            fields.get("id"),
                            json.loads(fields["data"]),
                        )
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value

    async def events(self, count: int) -> list[Sse]:
        out = []
        for _ in range(count):
            event = await self.next()
            assert event is not None, f"the stream ended after {out}"
            out.append(event)
        return out


@asynccontextmanager
async def opened(
    http: aiohttp.ClientSession, query: str = "", headers: dict | None = None
) -> AsyncIterator[SseReader]:
    async with http.get(f"{ROUTE}{query}", headers={**AUTH, **(headers or {})}) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        yield SseReader(response)


async def track(http: aiohttp.ClientSession, *names: str, namespace: str = "") -> None:
    body = [
        {"event_name": n, "user_id": f"u{i}", **({"namespace": namespace} if namespace else {})}
        for i, n in enumerate(names)
    ]
    async with http.post("/v0/analytics", json=body, headers=AUTH) as response:
        assert response.status == 204, await response.text()


async def test_events_arrive_as_they_are_tracked(http, server):
    async with opened(http) as stream:
        await track(http, "signup", "purchase")
        first, second = await stream.events(2)

    assert (first.data["event_name"], second.data["event_name"]) == ("signup", "purchase")
    assert first.data["user_id"] == "u0" and first.data["namespace"] == "default"
    assert isinstance(first.data["sequence"], int)  # a number, not a string
    assert first.id == str(first.data["sequence"])
    assert second.data["sequence"] > first.data["sequence"]
    assert first.data["replayed"] is False and first.data["dropped"] == 0


async def test_filters_by_namespace_event_names_and_prefix(http):
    query = "?namespace=shop&event_names=buy&event_names=pay"
    async with opened(http, query) as stream, opened(http, "?event_name_prefix=page_") as pages:
        await track(http, "buy", "browse", "pay", namespace="shop")
        await track(http, "buy", "page_view")
        names = [e.data["event_name"] for e in await stream.events(2)]
        (page,) = await pages.events(1)

    assert names == ["buy", "pay"]
    assert page.data["event_name"] == "page_view"


async def test_resumes_after_a_sequence_and_from_last_event_id(http):
    await track(http, "a", "b", "c")
    async with opened(http, "?after_sequence=0") as stream:
        replayed = await stream.events(3)
    assert [e.data["event_name"] for e in replayed] == ["a", "b", "c"]
    assert all(e.data["replayed"] for e in replayed)
    assert "user_id" not in replayed[0].data  # the log keeps no raw user id

    # A reconnecting EventSource: Last-Event-ID wins over the URL it was opened with.
    headers = {"Last-Event-ID": replayed[1].id}
    async with opened(http, "?after_sequence=0", headers) as stream:
        (after,) = await stream.events(1)
    assert after.data["event_name"] == "c"


async def test_a_token_is_required(http):
    async with http.get(ROUTE) as response:
        assert response.status == 401
    async with http.get(ROUTE, headers={"Authorization": "Bearer wrong"}) as response:
        assert response.status == 401
    # Never taken from the URL, where logs keep it.
    async with http.get(f"{ROUTE}?access_token={TOKEN}") as response:
        assert response.status == 401


@pytest.mark.parametrize(
    ("query", "headers", "named"),
    [
        ("?after_sequence=soon", {}, "after_sequence"),
        ("?after_sequence=999999", {}, "last_sequence"),  # past the log's head
        ("?event=signup", {}, "parameter"),
        ("?namespace=a&namespace=b", {}, "parameter"),
        ("", {"Last-Event-ID": "x1"}, "header"),
    ],
)
async def test_bad_parameters_are_400_naming_them(http, query, headers, named):
    async with http.get(f"{ROUTE}{query}", headers={**AUTH, **headers}) as response:
        body = await response.json()
    assert response.status == 400, body
    assert named in json.dumps(body)


async def test_past_the_subscriber_limit_a_stream_is_429(http, server, monkeypatch):
    # A client that left is found at the next heartbeat, when writing to it fails.
    monkeypatch.setattr("gateway.event_stream.HEARTBEAT_SECONDS", 0.05)
    async with opened(http), opened(http):
        async with http.get(ROUTE, headers=AUTH) as refused:
            body = await refused.json()
        assert refused.status == 429
        assert "KIMBALL_MAX_SUBSCRIBERS" in json.dumps(body)
    # Closed streams give their places back (once the next heartbeat finds them gone).
    await until(lambda: server.hub.subscriber_count == 0, "the subscriptions to end")
    async with opened(http):
        pass


async def test_a_quiet_stream_gets_heartbeats(http, monkeypatch):
    monkeypatch.setattr("gateway.event_stream.HEARTBEAT_SECONDS", 0.05)
    async with opened(http) as stream:
        reading = asyncio.ensure_future(stream.next())  # no event comes: only comments
        await until(lambda: stream.comments >= 3, "heartbeats after the opening comment")
        reading.cancel()


async def test_server_shutdown_ends_the_stream_with_an_error_event(tmp_path):
    server = await started(local_settings(tmp_path, api_auth=True, api_auth_tokens=(TOKEN,)))
    try:
        async with (
            gateway_of(server) as gateway,
            rest_client(gateway) as http,
            opened(http) as stream,
        ):
            stopping = asyncio.ensure_future(server.stop(grace=10))
            last = await stream.next()
            assert last is not None and last.event == "error"
            assert last.data["status"] == 503
            assert "resume" in last.data["error"]["what"]
            assert await stream.next() is None  # then the answer ends
            await stopping
    finally:
        await server.stop(grace=None)


async def test_gateway_shutdown_ends_open_streams_at_once(server):
    async with (
        gateway_of(server) as gateway,
        rest_client(gateway) as http,
        opened(http) as stream,
    ):
        stopping = asyncio.ensure_future(gateway.stop())
        last = await stream.next()
        assert last is not None and last.event == "error"
        assert "Last-Event-ID" in last.data["error"]["what"]
        await asyncio.wait_for(stopping, READ_SECONDS)
    await until(lambda: server.hub.subscriber_count == 0, "the subscription to end")
