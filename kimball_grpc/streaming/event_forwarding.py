"""Forwarding accepted events to ``external_grpc_event_targets``.

Every accepted event is streamed to each configured ``(host, port)`` through the
original contract's ``KimballIntegration.EventStream`` as ``KimballEvent{namespace,
name, key}`` (``key`` is the user id: targets are model services the operator trusts; for
events relayed by a sidecar, which keeps no raw ids, it is the user's hash in hex).

Ingestion never waits on a target. ``offer_records`` (the records and events the
ingestor just applied) is synchronous and only appends
references to one bounded queue per target (O(n) in C, no await, no lock, no
metric update); when a queue is full its OLDEST events are dropped and counted.
Messages are built by the sender, off the ingestion path. A background task per
target does everything else:

* it opens a channel and waits until it is connected (``kimball_forward_connected``
  says whether it is);
* it takes up to ``batch`` events from the head of the queue (after waiting up to
  ``linger`` seconds for fewer than ``batch`` to become more) and sends them as one
  ``EventStream`` call (a stream of that many messages, then half-close) with a
  deadline, ``call_timeout``, and waits for the target's ``Response``;
* on a transport failure (refused, unreachable, reset, deadline exceeded: a stalled
  target) it closes the channel, sleeps an exponential backoff with full jitter
  (uniform in ``[0, min(max_backoff, first_backoff * 2**n)]``) and reconnects with a
  new channel, so reconnection follows this backoff and not gRPC's hidden one.

Delivery semantics: **at least once, in order, while the queue does not overflow.**
A client-streaming call is only confirmed by its final ``Response``, so an event
counts as delivered (``kimball_forward_events_sent_total``) once the ``Response``
of the call that carried it arrived. The events of a call that failed with a
transient status (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, RESOURCE_EXHAUSTED,
ABORTED, INTERNAL) go back to the head of the queue and are sent again, in the
same order, on the next connection. So a target may see an event twice: when it
read part or all of a call whose ``Response`` was then lost (it stopped, stalled
past the deadline, the connection broke). Targets that must not double count
should deduplicate. A call that ends with any other status (INVALID_ARGUMENT,
UNAUTHENTICATED, UNIMPLEMENTED, UNKNOWN: a servicer that raised...) was refused
by the target itself: its events are dropped (``reason="rejected"``), since
sending them again would fail the same way and block every later event.

Events are lost only when dropped, and every drop is counted in
``kimball_forward_events_dropped_total{target, reason}``: ``queue_full`` (the
target was down or slow for longer than ``max_queue`` events), ``rejected`` (see
above) and ``shutdown`` (still queued when forwarding stopped; queues are in
memory only). At any time ``sent + dropped + queued == offered`` per target.

Memory is bounded: at most ``max_queue`` events wait per target, plus at most
``batch`` in the call in flight (``kimball_forward_queue_events`` counts both).

Cost: the senders run in the server's event loop. A dead or stalled target costs
next to nothing (a sleeping backoff, a call retried every ``call_timeout``), but
delivering does: grpc.aio spends tens of microseconds of loop time per streamed
message (and more per call, hence batching and ``linger``), so a healthy target
taking every event uses a share of the loop proportional to the event rate, and
beyond what one loop can stream, events are dropped (counted) rather than queued
without bound. ``call_timeout`` must exceed the time a target needs for ``batch``
events, or a slow target would see the same batch again and again.
"""

from __future__ import annotations

import asyncio
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
from kimball_grpc.outbound.backoff import Backoff
from kimball_grpc.outbound.channels import (
    KEEP_IDLE_CONNECTION,
    ConnectionLost,
    insecure_channel,
    target_address,
    wait_until_connected,
)

log = logging.getLogger(__name__)
STOP_SECONDS = 5.0  # the longest stop() waits for a sender to end

DEFAULT_MAX_QUEUE = 100_000
DEFAULT_BATCH = 500

# Statuses after which the events of a call are sent again: the target did not
# refuse them, the connection or the target's availability failed.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        # gRPC core reports broken HTTP/2 streams as INTERNAL; a Python servicer
        # that raises answers UNKNOWN, which is a refusal.
        grpc.StatusCode.INTERNAL,
    }
)

ChannelFactory = Callable[[str], grpc.aio.Channel]

# What a queue holds: an applied record with its event (the record has the resolved
# namespace, the event the user id).
_Item = tuple[EventRecord, Event]


def _target_channel(address: str) -> grpc.aio.Channel:
    # The idle watcher would take gRPC's idle disconnect for an outage.
    return insecure_channel(address, KEEP_IDLE_CONNECTION)


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
        batch: int = DEFAULT_BATCH,
        first_backoff: float = 0.1,
        max_backoff: float = 30.0,
        connect_timeout: float = 5.0,
        call_timeout: float = 10.0,
        linger: float = 0.05,
        channel_factory: ChannelFactory | None = None,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError(f"event target host must be a non-empty string, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
            raise ValueError(f"event target port must be between 1 and 65535, got {port!r}")
        if max_queue < 1 or batch < 1:
            raise ValueError("max_queue and batch must be at least 1")
        self.host = host
        self.port = port
        self.address = target_address(host, port)
        self.target = self.address  # the metrics label
        self.max_queue = max_queue
        self.batch = batch
        self._backoff = Backoff(first_backoff, max_backoff)
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.linger = linger
        self._channel_factory = channel_factory or _target_channel
        # Figures read by the metrics collector when scraped, so offer_records updates plain ints.
        self.sent = 0
        self.dropped_full = 0
        self.dropped_rejected = 0
        self.dropped_shutdown = 0
        self.failures = 0  # failed connection attempts and failed calls
        self.connected = False
        self._delivered_since_connect = False  # a call was answered on this connection
        self._queue: deque[_Item] = deque(maxlen=max_queue)
        self._inflight: list[_Item] = []  # the call being sent, oldest first
        self._wakeup = asyncio.Event()
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
        """Events waiting or in the call in flight (at most ``max_queue + batch``)."""
        return len(self._queue) + len(self._inflight)

    @property
    def dropped(self) -> int:
        """Events dropped for any reason."""
        return self.dropped_full + self.dropped_rejected + self.dropped_shutdown

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Start the background sender in the running event loop (once)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"kimball-forward-{self.target}"
            )

    async def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop forwarding: first wait up to ``drain_timeout`` seconds for the queue to be
        delivered, then end the call in flight and close the channel. What is still
        queued is dropped (``reason="shutdown"``); ``offer_records`` does nothing from now on."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        # Shutdown only: polling is simpler than a second event that offer_records would maintain.
        while self.queued and self._task is not None and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            # Bounded: a sender stuck in gRPC (closing a channel to a hung target) must not
            # hold up the server's shutdown.
            done, _ = await asyncio.wait({self._task}, timeout=STOP_SECONDS)
            if not done:
                log.warning("event target %s: sender did not stop in time", self.target)
        self.dropped_shutdown += self.queued
        self._queue.clear()
        self._inflight = []
        self.connected = False

    # -- the sender -------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._backoff
        loop = asyncio.get_running_loop()
        while True:
            channel: grpc.aio.Channel | None = None
            up_since: float | None = None
            try:
                channel = self._channel_factory(self.address)
                self._delivered_since_connect = False
                await wait_until_connected(channel, self.address, self.connect_timeout)
                self.connected = True
                up_since = loop.time()
                log.info("event target %s connected", self.target)
                await self._deliver(channel)
            except ConnectionLost as exc:
                self.failures += 1
                if self.connected:
                    log.warning(
                        "event target %s: %s; reconnecting with backoff, events are kept "
                        "(up to %d)",
                        self.target,
                        exc,
                        self.max_queue,
                    )
                elif backoff.failures == 0:
                    log.warning("event target %s: %s; retrying with backoff", self.target, exc)
                else:
                    log.debug("event target %s: %s", self.target, exc)
            except Exception:  # a bug: keep forwarding rather than stop silently
                self.failures += 1
                log.exception("event target %s: unexpected error", self.target)
                self._requeue()
            finally:
                self.connected = False
                if channel is not None:
                    await channel.close()
            # A connection that stayed up for a while restarts the backoff from the first
            # step; one that breaks at once keeps growing it (no tight reconnect loop).
            if up_since is not None and loop.time() - up_since >= backoff.longest:
                backoff.reset()
            if self._delivered_since_connect:
                backoff.reset()
            await backoff.wait()

    async def _deliver(self, channel: grpc.aio.Channel) -> None:
        """Send batches while the channel stays READY; raise ``ConnectionLost`` when not."""
        stub = integration_grpc.KimballIntegrationStub(channel)
        # Watches the connection while there is nothing to send, so the connected metric
        # drops (and reconnection starts) when an idle target goes away.
        watcher = asyncio.ensure_future(
            channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
        )
        try:
            while True:
                if not self._inflight:
                    await self._wait_for_events(watcher)
                    if self.linger > 0 and len(self._queue) < self.batch:
                        # Let a batch build up: a call costs as much CPU as a few
                        # messages, so one call per trickling event would cost the most.
                        await asyncio.sleep(self.linger)
                    self._take_batch()
                await self._send(stub)
        finally:
            watcher.cancel()

    async def _wait_for_events(self, watcher: asyncio.Future[None]) -> None:
        while not self._queue:
            self._wakeup.clear()
            waiter = asyncio.ensure_future(self._wakeup.wait())
            try:
                await asyncio.wait((waiter, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if watcher.done():
                raise ConnectionLost(f"connection to {self.address} lost")

    def _take_batch(self) -> None:
        queue = self._queue
        self._inflight = [queue.popleft() for _ in range(min(self.batch, len(queue)))]

    async def _send(self, stub: integration_grpc.KimballIntegrationStub) -> None:
        """Send the events in flight as one call; they leave the queue once answered."""
        try:
            # Built before the call: grpc.aio swallows an exception raised by a request
            # iterator and cancels the call, which would look transient and retry forever.
            messages = _messages(self._inflight)
        except (TypeError, ValueError) as exc:  # validated events: not expected, not retried
            self._reject(f"cannot encode the events: {exc}")
            return
        try:
            # A plain iterator: grpc.aio writes it and half-closes, and every failure,
            # including one while writing, surfaces here as one AioRpcError.
            await stub.EventStream(iter(messages), timeout=self.call_timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in TRANSIENT_CODES:
                self._requeue()
                raise ConnectionLost(f"{code.name}: {exc.details()}") from None
            self._reject(f"the target refused the call ({code.name}: {exc.details()})")
            return
        self.sent += len(self._inflight)
        self._inflight = []
        self._delivered_since_connect = True

    def _reject(self, why: str) -> None:
        """Drop the events in flight for good: sending them again would fail the same way."""
        log.warning("event target %s: %s; %d events dropped", self.target, why, len(self._inflight))
        self.dropped_rejected += len(self._inflight)
        self._inflight = []

    def _requeue(self) -> None:
        """Put the events in flight back at the head of the queue, in order. They are the
        oldest, so what does not fit any more is dropped from them (counted)."""
        inflight, self._inflight = self._inflight, []
        room = self.max_queue - len(self._queue)
        keep = inflight[len(inflight) - room :] if room < len(inflight) else inflight
        self.dropped_full += len(inflight) - len(keep)
        self._queue.extendleft(reversed(keep))


def _messages(items: list[_Item]) -> list[integration_pb.KimballEvent]:
    KimballEvent = integration_pb.KimballEvent
    messages = []
    for record, event in items:
        # The record's namespace is resolved ("default" for an empty one). A sidecar relays
        # no user ids: then only the user's hash is known.
        key = event.user_id or record.user_hash.digest.hex()
        messages.append(KimballEvent(namespace=record.namespace, name=event.event_name, key=key))
    return messages


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
        """Stop every sender, each first given up to ``drain_timeout`` s to deliver its queue."""
        await asyncio.gather(*(f.stop(drain_timeout) for f in self.forwarders))


class _ForwardingCollector(Collector):
    """The forwarders' figures, read when scraped: the ingestion path updates plain ints."""

    def __init__(self, forwarders: list[EventForwarder]) -> None:
        self._forwarders = forwarders

    def collect(self) -> Iterator[Metric]:
        sent = CounterMetricFamily(
            "kimball_forward_events_sent",
            "Events an event target confirmed (its EventStream call answered).",
            labels=["target"],
        )
        dropped = CounterMetricFamily(
            "kimball_forward_events_dropped",
            "Events never delivered to an event target: queue_full (oldest dropped while the "
            "target was down or slow), rejected (the target refused the call), shutdown.",
            labels=["target", "reason"],
        )
        failures = CounterMetricFamily(
            "kimball_forward_failures",
            "Failed connection attempts and calls to an event target (each one backs off).",
            labels=["target"],
        )
        connected = GaugeMetricFamily(
            "kimball_forward_connected",
            "1 while the connection to an event target is up, else 0.",
            labels=["target"],
        )
        queued = GaugeMetricFamily(
            "kimball_forward_queue_events",
            "Events waiting for an event target, including the call in flight.",
            labels=["target"],
        )
        for f in self._forwarders:
            sent.add_metric([f.target], f.sent)
            dropped.add_metric([f.target, "queue_full"], f.dropped_full)
            dropped.add_metric([f.target, "rejected"], f.dropped_rejected)
            dropped.add_metric([f.target, "shutdown"], f.dropped_shutdown)
            failures.add_metric([f.target], f.failures)
            connected.add_metric([f.target], int(f.connected))
            queued.add_metric([f.target], f.queued)
        yield from (sent, dropped, failures, connected, queued)
