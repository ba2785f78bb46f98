"""Forwarding accepted events to ``external_grpc_event_targets``.

Every accepted event is streamed to each configured ``(host, port)`` through the
original contract's ``KimballIntegration.EventStream`` as ``KimballEvent{namespace,
name, key}`` (``key`` is the user id: targets are model services the operator trusts; for
events relayed by a sidecar, which keeps no raw ids, it is the user's hash in hex).

**One long-lived stream per target**, as the original kept: it is opened when the
target is reached, written to for as long as the server runs, and half-closed only at
shutdown. Targets written for the original read that stream forever and may never answer
it (the original never waited for the ``Response``), so nothing here waits for one while
running; a target that answers when the client half-closes, as the contract says, works
the same way.

Ingestion never waits on a target. ``offer_records`` (the records and events the
ingestor just applied) is synchronous and only appends references to one bounded queue
per target (O(n) in C, no await, no lock, no metric update); when a queue is full its
OLDEST events are dropped and counted. A background task per target does everything else:

* it opens a channel, waits until it is connected, and opens the stream
  (``kimball_forward_connected`` is 1 while a stream is open);
* it asks whether the target serves ``kimball.v1.KimballEventTarget.EventBatches`` (a
  call with no message, which such a target answers): if so, it takes the events from
  the head of the queue up to ``BATCH_EVENTS`` at a time and writes each batch as one
  message; otherwise (UNIMPLEMENTED, as from targets written for the original) it opens
  ``EventStream`` and writes one message per event. Each write is awaited: gRPC's flow
  control holds a write until the target's
  window has room, so a target that reads slowly or not at all slows the writes, the
  queue fills, and its oldest events are dropped (``queue_full``);
* when the stream breaks (the target ends the call with any status, the connection is
  lost or refused, a keepalive ping goes unanswered) it closes the channel, waits an
  exponential backoff with full jitter (uniform in ``[0, min(max_backoff, first_backoff *
  2**n)]``; a stream that stayed open ``max_backoff`` seconds starts it again from the
  first step) and opens a new channel and stream (``kimball_forward_reconnects_total``).
  What was not yet written is sent on the new stream, in order.

Delivery semantics: **an event is delivered once its write to a live stream completed**
(``kimball_forward_events_sent_total``): gRPC took it for the target, within the
target's flow-control window. A stream carries no acknowledgement before its end, which
targets written for the original never send, so nothing later confirms or denies it: the
events written to a stream that then broke may or may not have been read by the target,
and are not sent again. Delivery is **at most once, in order**: an event whose write
failed was not written, and goes first on the next stream. No event is written twice, so
a target that refuses a stream (``UNIMPLEMENTED``, ``UNAUTHENTICATED``, a servicer that
raised) cannot make Kimball send the same events over and over.

Besides what a broken stream took with it, events are lost only when dropped before
being written, and every drop is counted in
``kimball_forward_events_dropped_total{target, reason}``: ``queue_full`` (the target was
down or slow for longer than ``max_queue`` events), ``unencodable`` (an event that cannot
be a protobuf message; the ingestor hands over validated events only) and ``shutdown``
(still queued when forwarding stopped; queues are in memory only). At any time ``sent +
dropped + queued == offered`` per target.

Memory is bounded: at most ``max_queue`` events wait per target, plus those being
written (``kimball_forward_queue_events`` counts both).

Shutdown (``stop``) first gives the queue up to its drain time to be written, then
half-closes the stream and waits for the target's ``Response`` until that same time is
up; a target that never answers, or ends the call with an error as the original's example
model server does, costs no more than that. Whatever is still queued is dropped
(``shutdown``).

Cost: the senders run in the server's event loop. A dead target costs next to nothing (a
sleeping backoff), a stalled one nothing per event but the queue's append and drop, but
delivering does: grpc.aio spends tens of microseconds of loop time per written message,
whatever its size. One event per message, a healthy target taking every event uses a
share of the loop proportional to the event rate (about 20,000 events/s is all one loop
can write), and beyond that events are dropped (counted) rather than queued without
bound; in batches, the cost per event is building it into its batch's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kimball_grpc.core.events import Event
from kimball_grpc.core.records import EventRecord
from kimball_grpc.generated import features_proto_pb2 as integration_pb
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import event_target_pb2 as target_pb
from kimball_grpc.generated.kimball.v1 import event_target_pb2_grpc as target_grpc
from kimball_grpc.outbound.backoff import Backoff
from kimball_grpc.outbound.channels import (
    KEEP_IDLE_CONNECTION,
    TARGET_KEEPALIVE,
    ConnectionLost,
    insecure_channel,
    target_address,
    wait_until_connected,
)

log = logging.getLogger(__name__)
STOP_SECONDS = 5.0  # the longest stop() waits for a sender that overran its time to end
# After the drain time is up, the sender still has to log its stream's end and close
# its channel: a moment, not a wait on the target.
END_MARGIN_SECONDS = 0.1

DEFAULT_MAX_QUEUE = 100_000
BATCH_EVENTS = 1_000  # events per message to a target that takes batches

ChannelFactory = Callable[[str], grpc.aio.Channel]

# What a queue holds: an applied record with its event (the record has the resolved
# namespace, the event the user id).
_Item = tuple[EventRecord, Event]


def _target_channel(address: str) -> grpc.aio.Channel:
    # Pings notice a target that vanished without closing the connection while the stream
    # is quiet, as seldom as targets allow by default.
    return insecure_channel(address, KEEP_IDLE_CONNECTION, TARGET_KEEPALIVE)


class EventForwarder:
    """Streams accepted events to one target; see the module docstring.

    ``offer_records`` may be called at any time from the event loop's thread (before
    ``start``, events just wait in the queue). ``start`` needs a running loop.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        first_backoff: float = 0.1,
        max_backoff: float = 30.0,
        connect_timeout: float = 5.0,
        channel_factory: ChannelFactory | None = None,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError(f"event target host must be a non-empty string, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
            raise ValueError(f"event target port must be between 1 and 65535, got {port!r}")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.host = host
        self.port = port
        self.address = target_address(host, port)
        self.target = self.address  # the metrics label
        self.max_queue = max_queue
        self._backoff = Backoff(first_backoff, max_backoff)
        self.connect_timeout = connect_timeout
        self._channel_factory = channel_factory or _target_channel
        # Figures read by the metrics collector when scraped, so offer_records updates plain ints.
        self.sent = 0
        self.dropped_full = 0
        self.dropped_unencodable = 0
        self.dropped_shutdown = 0
        self.failures = 0  # failed connection attempts and broken streams
        self.reconnects = 0  # streams opened after the first
        self.connected = False  # a stream is open
        self._queue: deque[_Item] = deque(maxlen=max_queue)
        self._writing: list[_Item] = []  # taken from the queue, their write not completed
        self._wakeup = asyncio.Event()  # events queued, the stream ended, or stopping
        self._closing = asyncio.Event()  # stop() was called: no new stream
        self._stop_at = 0.0  # loop time by which stop() wants the sender ended
        self._streams = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- the ingestion side: never waits -------------------------------------

    def offer_records(self, records: Sequence[EventRecord], events: Sequence[Event]) -> None:
        """Queue the event records just applied, with the events they came from (as in
        ``Ingestor._apply``: same length, same order); never blocks, never raises for the
        target's sake. A full queue drops its oldest events (counted)."""
        self._enqueue(list(zip(records, events, strict=True)))

    def _enqueue(self, items: Sequence[_Item]) -> None:
        if self._closed or not items:
            return
        queue = self._queue
        overflow = len(queue) + len(items) - self.max_queue
        if overflow > 0:
            self.dropped_full += overflow  # the deque's maxlen drops exactly these, oldest first
        queue.extend(items)
        self._wakeup.set()

    @property
    def queued(self) -> int:
        """Events waiting, and those being written (at most ``max_queue + BATCH_EVENTS``)."""
        return len(self._queue) + len(self._writing)

    @property
    def dropped(self) -> int:
        """Events dropped for any reason."""
        return self.dropped_full + self.dropped_unencodable + self.dropped_shutdown

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Start the background sender in the running event loop (once)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"kimball-forward-{self.target}"
            )

    async def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop forwarding within about ``drain_timeout`` seconds: until then the queue is
        written; then the stream is half-closed and the target's ``Response`` awaited for
        what is left of that time; then the channel is closed. What is still queued is
        dropped (``reason="shutdown"``); ``offer_records`` does nothing from now on."""
        loop = asyncio.get_running_loop()
        self._stop_at = loop.time() + drain_timeout
        # Shutdown only: polling is simpler than a second event that the sender would maintain.
        while self.queued and self._task is not None and loop.time() < self._stop_at:
            await asyncio.sleep(0.01)
        self._closed = True
        self._closing.set()
        self._wakeup.set()
        if self._task is not None:
            time_left = max(0.0, self._stop_at - loop.time()) + END_MARGIN_SECONDS
            done, _ = await asyncio.wait({self._task}, timeout=time_left)
            if not done:  # still connecting, or a write the target does not take
                self._task.cancel()
                # Bounded: a sender stuck in gRPC (closing a channel to a hung target) must
                # not hold up the server's shutdown.
                done, _ = await asyncio.wait({self._task}, timeout=STOP_SECONDS)
                if not done:
                    log.warning("event target %s: sender did not stop in time", self.target)
        self.dropped_shutdown += self.queued
        self._queue.clear()
        self._writing = []
        self.connected = False

    # -- the sender -------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._backoff
        loop = asyncio.get_running_loop()
        while not self._closed:
            channel: grpc.aio.Channel | None = None
            opened_at: float | None = None
            try:
                channel = self._channel_factory(self.address)
                await wait_until_connected(channel, self.address, self.connect_timeout)
                batches = await self._takes_batches(channel)
                call = (
                    target_grpc.KimballEventTargetStub(channel).EventBatches()
                    if batches
                    else integration_grpc.KimballIntegrationStub(channel).EventStream()
                )
                call.add_done_callback(lambda _: self._wakeup.set())
                opened_at = loop.time()
                self._opened(batches)
                await self._write(call, batches)
                await self._end(call)
                return
            except ConnectionLost as exc:
                self._broken(exc)
            except Exception:  # a bug: keep forwarding rather than stop silently
                self.failures += 1
                log.exception("event target %s: unexpected error", self.target)
                self._put_back()
            finally:
                self.connected = False
                if channel is not None:
                    await channel.close()
            # A stream that stayed open for a while restarts the backoff from the first
            # step; one that breaks at once keeps growing it (no tight reopening loop).
            if opened_at is not None and loop.time() - opened_at >= backoff.longest:
                backoff.reset()
            await self._pause(backoff.next_delay())

    async def _takes_batches(self, channel: grpc.aio.Channel) -> bool:
        """Whether the target serves ``EventBatches``: it answers a call with no message."""
        call = target_grpc.KimballEventTargetStub(channel).EventBatches()
        try:
            await call.done_writing()
            await asyncio.wait_for(call, self.connect_timeout)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "no answer"
            log.debug("event target %s: no EventBatches (%s)", self.target, code)
            call.cancel()
            return False
        return True

    def _opened(self, batches: bool) -> None:
        self.connected = True
        self._streams += 1
        if self._streams > 1:
            self.reconnects += 1
        how = "EventBatches" if batches else "EventStream, one event per message"
        log.info("event target %s: stream open (%s)", self.target, how)

    def _broken(self, exc: ConnectionLost) -> None:
        self.failures += 1
        if self.connected:
            log.warning(
                "event target %s: %s; opening a new stream with backoff, unwritten events "
                "are kept (up to %d)",
                self.target,
                exc,
                self.max_queue,
            )
        elif self._backoff.failures == 0:
            log.warning("event target %s: %s; retrying with backoff", self.target, exc)
        else:
            log.debug("event target %s: %s", self.target, exc)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if forwarding stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    async def _write(self, call: grpc.aio.StreamUnaryCall, batches: bool) -> None:
        """Write queued events to the stream, a batch or one at a time, until stopping (then
        return) or the stream ends (then raise ``ConnectionLost``)."""
        queue = self._queue
        while not self._closed:
            if not queue:
                # While there is something to write, a failed write tells that it ended.
                if call.done():
                    raise ConnectionLost(await _why_ended(call))
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            take = min(len(queue), BATCH_EVENTS if batches else 1)
            items = self._writing = [queue.popleft() for _ in range(take)]
            # Built here, off the ingestion path; validated events always encode.
            message = _batch(items) if batches else _message(items[0])
            if message is None:  # one or more cannot be encoded: dropped, the others go on
                good = [item for item in items if _message(item) is not None]
                self.dropped_unencodable += take - len(good)
                self._writing = []
                queue.extendleft(reversed(good))
                continue
            try:
                await call.write(message)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                # Not written: they go first on the next stream.
                self._put_back()
                raise ConnectionLost(await _why_ended(call)) from None
            self._writing = []
            self.sent += take

    async def _end(self, call: grpc.aio.StreamUnaryCall) -> None:
        """Half-close the stream and wait for the target's answer until ``stop``'s time is up."""
        loop = asyncio.get_running_loop()
        try:
            await call.done_writing()
            response = await asyncio.wait_for(call, max(0.0, self._stop_at - loop.time()))
        except TimeoutError:
            log.info("event target %s: no answer to the end of the stream in time", self.target)
        except grpc.aio.AioRpcError as exc:
            # Targets written for the original need not answer: every written event was
            # delivered all the same.
            log.info(
                "event target %s: the stream ended with %s at shutdown",
                self.target,
                exc.code().name,
            )
        else:
            log.info("event target %s: stream ended, Response code %d", self.target, response.code)

    def _put_back(self) -> None:
        """Put the events whose write did not complete back at the head of the queue. If
        the queue filled up meanwhile, they are the oldest: those that do not fit are
        dropped (counted)."""
        items, self._writing = self._writing, []
        room = self.max_queue - len(self._queue)
        kept = items[len(items) - room :] if room < len(items) else items
        self.dropped_full += len(items) - len(kept)
        self._queue.extendleft(reversed(kept))


async def _why_ended(call: grpc.aio.StreamUnaryCall) -> str:
    """How a stream that is done ended, for the log."""
    code = await call.code()
    if code is grpc.StatusCode.OK:
        return "the target ended the stream"
    return f"the stream ended with {code.name}: {await call.details()}"


def _fields(item: _Item) -> tuple[str, str, str]:
    """The namespace, name and key an event is forwarded with."""
    record, event = item
    # The record's namespace is resolved ("default" for an empty one). A sidecar relays no
    # user ids: then only the user's hash is known.
    return record.namespace, event.event_name, event.user_id or record.user_hash.digest.hex()


def _message(item: _Item) -> integration_pb.KimballEvent | None:
    """The event as one ``EventStream`` message; None if it cannot be one (logged)."""
    namespace, name, key = _fields(item)
    try:
        return integration_pb.KimballEvent(namespace=namespace, name=name, key=key)
    except (TypeError, ValueError) as exc:
        log.warning("event target: event dropped, cannot encode it: %s", exc)
        return None


def _batch(items: Sequence[_Item]) -> target_pb.ForwardedEvents | None:
    """The events as one ``EventBatches`` message, built in place (a message built and then
    copied in costs more); None if one of them cannot be encoded."""
    batch = target_pb.ForwardedEvents()
    add = batch.events.add
    try:
        for item in items:
            namespace, name, key = _fields(item)
            add(namespace=namespace, name=name, key=key)
    except (TypeError, ValueError):
        return None
    return batch


class EventForwarding:
    """One ``EventForwarder`` per configured target, with their metrics in ``registry``.

    ``bool(forwarding)`` is False without targets, so the ingestion path can skip
    building accepted events nobody wants.
    """

    def __init__(
        self,
        targets: Iterable[tuple[str, int]],
        registry: CollectorRegistry,
        **options: Any,
    ) -> None:
        """``targets`` as in ``Settings.external_grpc_event_targets`` (a target listed twice
        gets the events once); ``options`` are ``EventForwarder``'s keyword arguments."""
        self.forwarders = [
            EventForwarder(host, port, **options) for host, port in dict.fromkeys(targets)
        ]
        if self.forwarders:  # no empty metric families on servers without targets
            registry.register(_ForwardingCollector(self.forwarders))

    def __bool__(self) -> bool:
        return bool(self.forwarders)

    def offer_records(self, records: Sequence[EventRecord], events: Sequence[Event]) -> None:
        """Queue the event records just applied, with their events, for every target;
        never blocks (see ``EventForwarder.offer_records``)."""
        if self.forwarders:
            items = list(zip(records, events, strict=True))  # one list, shared by every queue
            for forwarder in self.forwarders:
                forwarder._enqueue(items)

    def start(self) -> None:
        """Start every target's sender in the running event loop."""
        for forwarder in self.forwarders:
            forwarder.start()

    async def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop every sender within about ``drain_timeout`` s: each writes its queue, then
        half-closes its stream and waits for the answer (``EventForwarder.stop``)."""
        await asyncio.gather(*(f.stop(drain_timeout) for f in self.forwarders))


class _ForwardingCollector(Collector):
    """The forwarders' figures, read when scraped: the ingestion path updates plain ints."""

    def __init__(self, forwarders: list[EventForwarder]) -> None:
        self._forwarders = forwarders

    def collect(self) -> Iterator[Metric]:
        sent = CounterMetricFamily(
            "kimball_forward_events_sent",
            "Events delivered to an event target: written to its open EventStream.",
            labels=["target"],
        )
        dropped = CounterMetricFamily(
            "kimball_forward_events_dropped",
            "Events never delivered to an event target: queue_full (oldest dropped while the "
            "target was down or slow), unencodable, shutdown (still queued at the end).",
            labels=["target", "reason"],
        )
        failures = CounterMetricFamily(
            "kimball_forward_failures",
            "Failed connection attempts and broken streams to an event target (each one "
            "backs off).",
            labels=["target"],
        )
        reconnects = CounterMetricFamily(
            "kimball_forward_reconnects",
            "Streams to an event target opened after the first: each replaces one that broke.",
            labels=["target"],
        )
        connected = GaugeMetricFamily(
            "kimball_forward_connected",
            "1 while a stream to an event target is open, else 0.",
            labels=["target"],
        )
        queued = GaugeMetricFamily(
            "kimball_forward_queue_events",
            "Events waiting for an event target, including the one being written.",
            labels=["target"],
        )
        for f in self._forwarders:
            sent.add_metric([f.target], f.sent)
            dropped.add_metric([f.target, "queue_full"], f.dropped_full)
            dropped.add_metric([f.target, "unencodable"], f.dropped_unencodable)
            dropped.add_metric([f.target, "shutdown"], f.dropped_shutdown)
            failures.add_metric([f.target], f.failures)
            reconnects.add_metric([f.target], f.reconnects)
            connected.add_metric([f.target], int(f.connected))
            queued.add_metric([f.target], f.queued)
        yield from (sent, dropped, failures, reconnects, connected, queued)
