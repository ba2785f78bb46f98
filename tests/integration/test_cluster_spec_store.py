"""Feature specs in the shared KV bucket: what one replica writes, every other applies,
in the same order, with the same history; a replica starting later replays it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import nats
import pytest
from support.nats_server import NatsServer
from support.polling import until

from kimball_grpc.cluster.spec_store import SPECS_BUCKET, SpecStore, spec_key
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.feature_flags import FeatureSpec, check_spec
from kimball_grpc.core.records import FeatureSpecRecord

T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


class Replica:
    """A store on its own connection, applying what it watches to its own engine."""

    def __init__(self, nc: nats.NATS) -> None:
        self.nc = nc
        self.store = SpecStore(nc)
        self.engine = Engine()
        self.task: asyncio.Task[None] | None = None
        self.applied = 0  # the revision of the last change applied

    async def start(self) -> None:
        await self.store.open()
        self.task = asyncio.create_task(self._apply())

    async def _apply(self) -> None:
        async for revision, changes in self.store.watch():
            for change in changes or ():
                self.engine.apply(change)
            self.applied = revision

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.nc.close()


@pytest.fixture
async def replicas(nats_server) -> AsyncIterator[list[Replica]]:
    made: list[Replica] = []

    async def start() -> Replica:
        replica = Replica(await nats.connect(nats_server.url))
        await replica.start()
        made.append(replica)
        return replica

    yield start  # type: ignore[misc]
    for replica in made:
        await replica.stop()
    nc = await nats.connect(nats_server.url)
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_key_value(SPECS_BUCKET)
    await nc.close()


def view(engine: Engine) -> tuple[list[FeatureSpec], dict[str, list[tuple[object, ...]]]]:
    flags = engine.flags
    histories = {
        name: [(c.time, c.token_id, c.old, c.new) for c in changes]
        for name, changes in flags.histories().items()
    }
    return sorted(flags.listed(), key=lambda s: s.name), histories


async def test_specs_put_on_one_replica_are_seen_by_another_with_their_history(replicas):
    writer = await replicas()
    reader = await replicas()
    name = "new checkout / ünïcode"  # any printable name, not only what a key allows
    on = check_spec(FeatureSpec(name, boolean=True))
    half = check_spec(FeatureSpec(name, rollout_percentage=50))
    await writer.store.put([FeatureSpecRecord(name, on, T0, "token-a")])
    await writer.store.put([FeatureSpecRecord(name, half, T0.replace(hour=1), "token-b")])
    await writer.store.put([FeatureSpecRecord("other", on.__class__("other"), T0, "token-a")])
    last = await writer.store.put([FeatureSpecRecord("other", None, T0.replace(hour=2), "token-c")])
    await until(lambda: writer.applied == reader.applied == last, "both to apply every change")
    assert view(reader.engine) == view(writer.engine)
    assert [s.name for s in reader.engine.flags.listed()] == [name]
    assert reader.engine.flags.get(name) == half
    # The deletion keeps its token and time, as the single node's log does.
    deleted = reader.engine.flags.changes("other")[0]
    assert (deleted.token_id, deleted.new) == ("token-c", None)
    # A replica that starts later replays the same history.
    late = await replicas()
    await until(lambda: late.applied == last, "the late replica to catch up")
    assert view(late.engine) == view(writer.engine)


async def test_a_value_that_is_no_spec_change_is_skipped(replicas, nats_server):
    reader = await replicas()
    nc = await nats.connect(nats_server.url)
    kv = await nc.jetstream().key_value(SPECS_BUCKET)
    await kv.put(spec_key("junk"), b"\xff not a record")
    await kv.put("bm90LXRoaXM", b"")  # an empty batch, under another key
    await reader.store.put([FeatureSpecRecord("after", check_spec(FeatureSpec("after")), T0, "t")])
    await until(lambda: [s.name for s in reader.engine.flags.listed()] == ["after"], "the next")
    await nc.close()
