"""``Subscribe`` in cluster mode, on a real 3-node NATS JetStream cluster on loopback with two
replicas: a subscriber on either replica gets every event accepted on both, filtered as on a
single node, numbered in the stream's order; resuming after a sequence number reads back
exactly the events after it, then goes on live; a position past the stream's end, one the
stream no longer holds and bad filters are refused as a single node refuses them; the REST
event stream serves it too; the feed runs only while the replica has subscribers."""

from __future__ import annotations

import asyncio
import json

import grpc
import nats
import pytest
from support.cluster_replicas import (
    events,
    ingest_acknowledged,
    replica,
    send_grpc,
    send_rest,
)
from support.grpc_errors import error_metadata
from support.in_process import gateway_of, rest_client, running, stub_of
from support.polling import until

from kimball_grpc.cluster.event_feed import RECORDS_PER_MESSAGE
from kimball_grpc.cluster.event_log import STREAM
from kimball_grpc.core.bloom import hash_key
from kimball_grpc.core.events import Event
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

pytestmark = pytest.mark.xdist_group("nats-cluster")

READ_SECONDS = 20.0


def sent(batch: list[Event]) -> list[tuple[str, str, str]]:
    """What a subscriber sees of each event: namespace, name, user hash (sorted)."""
    return sorted((e.namespace, e.event_name, hash_key(e.user_id).digest.hex()) for e in batch)


def seen(answers: list[pb.SubscribeResponse]) -> list[tuple[str, str, str]]:
    return sorted((a.event.namespace, a.event.event_name, a.user_hash) for a in answers)


class Subscriber:
    """A subscription read in the background (a cancelled read would end the call)."""

    def __init__(self, call) -> None:
        self.call = call
        self.events: asyncio.Queue[pb.SubscribeResponse] = asyncio.Queue()
        self.reading = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            assert response.dropped == 0
            for event in response.events:
                self.events.put_nowait(event)

    async def read(self, count: int) -> list[pb.SubscribeResponse]:
        """The next ``count`` events."""
        async with asyncio.timeout(READ_SECONDS):
            return [await self.events.get() for _ in range(count)]

    def cancel(self) -> None:
        self.reading.cancel()
        self.call.cancel()


def subscribe(stub, **fields) -> Subscriber:
    return Subscriber(stub.Subscribe(pb.SubscribeRequest(max_events_per_response=100, **fields)))


async def feeding(server, subscribers: int) -> None:
    await until(
        lambda: server.feed.running and server.feed.hub.subscriber_count == subscribers,
        f"{subscribers} subscribers fed",
    )


async def test_a_subscriber_on_either_replica_gets_every_replicas_events_filtered(
    fresh_stream, tmp_path
):
    shop_rest, shop_grpc = events("rest", 60), events("grpc", 60)
    other = [e._replace(namespace="other") for e in events("other", 10)]
    async with (
        running(replica(fresh_stream, tmp_path, "replica-a")) as a,
        running(replica(fresh_stream, tmp_path, "replica-b")) as b,
        stub_of(a) as on_a,
        stub_of(b) as on_b,
    ):
        everything = subscribe(on_a)
        buys = subscribe(on_b, namespace="shop", event_names=["buy"])
        prefixed = subscribe(on_b, namespace="shop", event_name_prefix="vi")
        await feeding(a, 1)
        await feeding(b, 2)
        await asyncio.gather(send_rest(a, shop_rest), send_grpc(b, shop_grpc), send_grpc(a, other))
        got = await everything.read(130)
        assert seen(got) == sent(shop_rest + shop_grpc + other)
        numbers = [answer.sequence for answer in got]
        assert numbers == sorted(set(numbers))  # the stream's order, each event once
        # As events read back from a log: the stream keeps user hashes, not user ids.
        assert {(a.event.user_id, a.event.HasField("datetime"), a.replayed) for a in got} == {
            ("", False, False)
        }
        shop = shop_rest + shop_grpc
        assert seen(await buys.read(40)) == sent([e for e in shop if e.event_name == "buy"])
        assert seen(await prefixed.read(80)) == sent([e for e in shop if e.event_name == "view"])
        # The same events, in the same order and with the same numbers, on both replicas.
        both = subscribe(on_b, after_sequence=0)
        assert [(x.sequence, x.user_hash) for x in await both.read(130)] == [
            (x.sequence, x.user_hash) for x in got
        ]
        for call in (everything, buys, prefixed, both):
            call.cancel()
        await until(lambda: not a.feed.running and not b.feed.running, "the feeds to stop")


async def test_resuming_reads_back_exactly_the_events_after_then_goes_on_live(
    fresh_stream, tmp_path
):
    first, later = events("first", 80), events("later", 40)
    async with (
        running(replica(fresh_stream, tmp_path, "replica-a")) as a,
        running(replica(fresh_stream, tmp_path, "replica-b")) as b,
        stub_of(a) as on_a,
        stub_of(b) as on_b,
    ):
        await asyncio.gather(send_grpc(a, first[:40]), send_rest(b, first[40:]))
        live = subscribe(on_a, after_sequence=0)
        history = await live.read(80)
        assert {x.replayed for x in history} == {True}
        assert seen(history) == sent(first)
        middle = history[29].sequence
        resumed = subscribe(on_b, namespace="shop", after_sequence=middle)
        assert [x.sequence for x in await resumed.read(50)] == [x.sequence for x in history[30:]]
        await feeding(b, 1)
        await send_grpc(a, later)
        went_on = await resumed.read(40)
        assert seen(went_on) == sent(later)
        assert {x.replayed for x in went_on} == {False}
        assert went_on[0].sequence > history[-1].sequence
        # Resuming from the last event read: nothing again, then what comes (an event
        # read again, or one more, would come first).
        again = subscribe(on_a, after_sequence=went_on[-1].sequence)
        await feeding(a, 2)
        await send_grpc(b, events("last", 5))
        assert seen(await again.read(5)) == sent(events("last", 5))
        assert seen(await resumed.read(5)) == sent(events("last", 5))
        for call in (live, resumed, again):
            call.cancel()


async def test_positions_past_the_stream_or_no_longer_held_and_bad_filters_are_refused(
    fresh_stream, tmp_path
):
    async with (
        running(replica(fresh_stream, tmp_path, "replica-a")) as a,
        stub_of(a) as stub,
    ):
        for batch in range(4):
            await send_grpc(a, events(f"b{batch}", 10))
        connection = await nats.connect(fresh_stream.urls)
        try:
            js = connection.jetstream()
            last = (await js.stream_info(STREAM)).state.last_seq
            head = (last + 1) * RECORDS_PER_MESSAGE - 1
            call = stub.Subscribe(pb.SubscribeRequest(after_sequence=head + 1), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as past:
                await call.read()
            assert past.value.code() is grpc.StatusCode.OUT_OF_RANGE
            assert past.value.details() == (
                f"after_sequence {head + 1} is past the last sequence number, {head}: "
                f"resume from {head} or lower"
            )
            assert error_metadata(past.value) == {
                "after_sequence": str(head + 1),
                "last_sequence": str(head),
            }
            # The stream's limits removed its oldest messages: they cannot be read back.
            await js.purge_stream(STREAM, keep=3)
            first = (await js.stream_info(STREAM)).state.first_seq
        finally:
            await connection.close()
        call = stub.Subscribe(pb.SubscribeRequest(after_sequence=0), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await call.read()
        assert gone.value.code() is grpc.StatusCode.OUT_OF_RANGE
        oldest = first * RECORDS_PER_MESSAGE
        assert gone.value.details() == (
            f"the event stream no longer holds message 1, which sequence numbers after 0 "
            f"need: resume from {oldest - 1} or later, or subscribe live"
        )
        held = subscribe(stub, after_sequence=oldest - 1)
        (oldest_event,) = await held.read(1)  # from the oldest message held on
        assert oldest_event.sequence // RECORDS_PER_MESSAGE == first
        held.cancel()
        for bad, field in (
            (pb.SubscribeRequest(max_events_per_response=1001), "max_events_per_response"),
            (pb.SubscribeRequest(event_names=["x"] * 1001), "at most 1000 event names"),
            (pb.SubscribeRequest(event_name_prefix="p" * 257), "event_name_prefix"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Subscribe(bad, timeout=5).read()
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert field in refused.value.details()
        await until(lambda: a.feed.hub.subscriber_count == 0, "the refused ones to hold nothing")
        await until(lambda: not a.feed.running, "the feed to stop")


async def test_the_rest_event_stream_of_a_replica_carries_the_clusters_events(
    fresh_stream, tmp_path
):
    async with (
        running(replica(fresh_stream, tmp_path, "replica-a")) as a,
        running(replica(fresh_stream, tmp_path, "replica-b")) as b,
        gateway_of(a) as gateway,
        rest_client(gateway) as http,
        http.get("/v0/events:stream", params={"namespace": "shop"}) as answer,
    ):
        assert answer.status == 200
        await feeding(a, 1)
        batch = events("sse", 5)
        await send_grpc(b, batch)
        got = []
        async with asyncio.timeout(READ_SECONDS):
            while len(got) < len(batch):
                line = (await answer.content.readline()).decode()
                if line.startswith("data: "):
                    got.append(json.loads(line.removeprefix("data: ")))
        assert sorted((e["event_name"], e["user_hash"]) for e in got) == sorted(
            (e.event_name, hash_key(e.user_id).digest.hex()) for e in batch
        )
    async with (
        running(replica(fresh_stream, tmp_path, "replica-a")) as a,
        gateway_of(a) as gateway,
        rest_client(gateway) as http,
        http.get("/v0/events:stream", params={"after_sequence": str(10**15)}) as refused,
    ):
        assert refused.status == 400
        assert "is past the last sequence number" in json.dumps(await refused.json())


async def remove_replay_consumers(cluster) -> int:
    """Delete the stream's pull consumers (the replays'), as the server does with one left
    idle; how many there were."""
    connection = await nats.connect(cluster.urls)
    try:
        js = connection.jetstream()
        pulls = [c for c in await js.consumers_info(STREAM) if not c.config.deliver_subject]
        for consumer in pulls:
            await js.delete_consumer(STREAM, consumer.name)
    finally:
        await connection.close()
    return len(pulls)


async def test_a_replay_whose_consumer_is_removed_goes_on_where_it_was(
    fresh_stream, tmp_path, monkeypatch
):
    monkeypatch.setattr("kimball_grpc.cluster.event_feed.REPLAY_FETCH", 1)  # many fetches
    batches = [events(f"r{i}", 400) for i in range(6)]
    async with (
        running(replica(fresh_stream, tmp_path, "replica-a")) as a,
        stub_of(a) as stub,
    ):
        for batch in batches:  # one after another: many messages to read back
            await send_grpc(a, batch)
        call = stub.Subscribe(pb.SubscribeRequest(after_sequence=0))
        got = [await call.read()]
        # Not reading on: the server waits on the client, its replay half done.
        assert await remove_replay_consumers(fresh_stream) == 1
        async with asyncio.timeout(READ_SECONDS):
            while len(got) < 2400:
                got.append(await call.read())
        everything = [event for batch in batches for event in batch]
        assert seen(got) == sent(everything)
        assert [x.sequence for x in got] == sorted({x.sequence for x in got})
        call.cancel()


async def test_the_feed_goes_on_when_the_nats_server_it_reads_from_is_killed(
    fresh_stream, tmp_path
):
    acknowledged: list[Event] = []
    # A lease long enough that the NATS client's reconnection never lapses it.
    settings = replica(fresh_stream, tmp_path, "replica-a", lease_seconds=10.0)
    async with running(settings) as a, stub_of(a) as stub:
        subscriber = subscribe(stub)
        await feeding(a, 1)

        ingesting = asyncio.ensure_future(ingest_acknowledged(stub, acknowledged, 40))
        await until(lambda: len(acknowledged) >= 100, "some events acknowledged", 20)
        port = a.connection.connected_url.port
        reading = [node.port for node in fresh_stream.nodes].index(port)
        await asyncio.to_thread(fresh_stream.kill, reading)
        try:
            await ingesting
            got: list[pb.SubscribeResponse] = []
            want = set(sent(acknowledged))

            def every_acknowledged_one_seen() -> bool:
                while not subscriber.events.empty():
                    got.append(subscriber.events.get_nowait())
                return want <= set(seen(got))

            await until(every_acknowledged_one_seen, "every acknowledged event", 30)
            numbers = [x.sequence for x in got]
            assert numbers == sorted(set(numbers))  # none twice, in the stream's order
        finally:
            subscriber.cancel()
            await asyncio.to_thread(fresh_stream.restart, reading)
