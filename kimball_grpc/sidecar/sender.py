"""A sidecar's sender: streams its spool to the api server and drops what it acknowledged.

One background task keeps one ``KimballRelay.Relay`` stream open to the api
server (``ANALYTICS_HOST``). It sends the spool in order, as messages of whole
spooled batches (within ``max_events`` events and ``max_bytes``), with up to
``window`` messages waiting for their acknowledgement, so the next messages
travel while the api server logs one (it handles them one at a time). Each
acknowledgement drops its events from the spool.

When the stream fails (the api server stopped, restarts, is still restoring,
refuses the token, or takes or acknowledges nothing for ``ack_timeout``) the
sender closes the channel, sleeps an exponential backoff with full jitter and
starts again from the last acknowledged event. Events sent but not acknowledged
are sent again: the api server may see them twice, which changes no count.
Nothing is ever dropped here; the spool's bound refuses new events instead. The api
server may refuse events past its limits (a new namespace past
KIMBALL_MAX_NAMESPACES, ...): it acknowledges them with the rest and says how many,
which are counted and logged here, since sending them again would be refused again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kimball_grpc.generated.kimball.v1 import relay_pb2 as relay_pb
from kimball_grpc.generated.kimball.v1 import relay_pb2_grpc as relay_grpc
from kimball_grpc.outbound.api_server_client import Metadata, relay_channel
from kimball_grpc.outbound.backoff import Backoff
from kimball_grpc.outbound.channels import ConnectionLost, wait_until_connected
from kimball_grpc.sidecar.spool import Spool

log = logging.getLogger(__name__)
STOP_SECONDS = 5.0  # the longest stop() waits for the sender to end

# A refusal that needs the operator (logged as an error): the others resolve themselves.
_CONFIGURATION_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)


class StreamEnded(Exception):
    """The api server ended the relay stream with a status."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details or ""


class RelaySender:
    """Delivers ``spool`` to the api server at ``address``."""

    def __init__(
        self,
        spool: Spool,
        address: str,
        metadata: Metadata = (),
        *,
        channel_factory: Callable[[str], grpc.aio.Channel] = relay_channel,
        # Small enough that the api server applying one message holds its loop for tens
        # of milliseconds, not the best part of a second, while a backlog catches up.
        max_events: int = 2_000,
        max_bytes: int = 1024 * 1024,
        window: int = 4,
        ack_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        first_backoff: float = 0.1,
        max_backoff: float = 10.0,
    ) -> None:
        self.spool = spool
        self.address = address
        self.connected = False
        self.delivered = 0  # events the api server acknowledged and applied since start
        self.failures = 0  # streams that ended in a failure
        self.refused = 0  # events the api server refused (past its limits) since start
        self._metadata = metadata
        self._channel_factory = channel_factory
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.window = window
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self._backoff = Backoff(first_backoff, max_backoff)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop sending, after up to ``drain_timeout`` seconds to deliver what is spooled
        (the rest stays in the spool for the next start)."""
        if self._task is None:
            return
        if drain_timeout > 0 and self.spool.pending and self.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), drain_timeout)
        self._task.cancel()
        done, _ = await asyncio.wait({self._task}, timeout=STOP_SECONDS)
        if not done:
            log.warning("relay: the sender did not stop within %g s", STOP_SECONDS)

    async def _drained(self) -> None:
        while self.spool.pending:
            self.spool.changed.clear()
            await self.spool.changed.wait()

    async def _run(self) -> None:
        backoff = self._backoff
        while True:
            channel = self._channel_factory(self.address)
            delivered = self.delivered
            try:
                await wait_until_connected(channel, self.address, self.connect_timeout)
                self.connected = True
                log.info(
                    "relay: connected to the api server at %s; %d events to deliver",
                    self.address,
                    self.spool.pending,
                )
                await self._stream(channel)
            except grpc.aio.AioRpcError as exc:
                self.failures += 1
                self._report(exc.code(), exc.details() or "", backoff.failures)
            except StreamEnded as exc:
                self.failures += 1
                self._report(exc.code, exc.details, backoff.failures)
            except ConnectionLost as exc:
                self.failures += 1
                self._report(None, str(exc), backoff.failures)
            except Exception:  # a bug: keep delivering rather than stop silently
                self.failures += 1
                log.exception("relay: unexpected error; events stay in the spool")
            finally:
                self.connected = False
                await channel.close()
            if self.delivered > delivered:
                backoff.reset()  # it worked for a while: start again from the first step
            await backoff.wait()

    def _report(self, code: grpc.StatusCode | None, details: str, failures: int) -> None:
        """One log line for the first failure in a row (an error if the operator must act)."""
        if failures > 0:
            log.debug("relay: api server at %s: %s %s", self.address, code, details)
            return
        why = f"{code.name}: {details}" if code is not None else details
        if code in _CONFIGURATION_CODES:
            log.error(
                "relay: the api server at %s refused the relay stream (%s); %d events "
                "stay in the spool until this is fixed",
                self.address,
                why,
                self.spool.pending,
            )
        else:
            log.warning(
                "relay: api server at %s: %s; %d events kept in the spool, retrying with backoff",
                self.address,
                why,
                self.spool.pending,
            )

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        """Send the spool on one stream until it fails (then raise)."""
        call = relay_grpc.KimballRelayStub(channel).Relay(metadata=self._metadata)
        # The api server opens the stream with its headers, or refuses it (a wrong token,
        # still restoring) with a status. Waiting for that before writing keeps a write
        # from racing the refusal, which gRPC would report as INTERNAL instead.
        try:
            await asyncio.wait_for(call.initial_metadata(), self.ack_timeout)
        except TimeoutError:
            call.cancel()
            raise ConnectionLost(
                f"the api server did not open the relay stream within {self.ack_timeout:g} s"
            ) from None
        if call.done():
            raise StreamEnded(await call.code(), await call.details())
        loop = asyncio.get_running_loop()
        waiting: deque[tuple[int, float]] = deque()  # (last sequence, sent at) per message
        reader = asyncio.ensure_future(self._read_acknowledgements(call, waiting))
        sent = self.spool.acknowledged
        try:
            while True:
                while self.spool.last_sequence <= sent or len(waiting) >= self.window:
                    timeout = None
                    if waiting:
                        timeout = waiting[0][1] + self.ack_timeout - loop.time()
                        if timeout <= 0:
                            raise ConnectionLost(
                                f"no acknowledgement within {self.ack_timeout:g} s"
                            )
                    self.spool.changed.clear()
                    waiter = asyncio.ensure_future(self.spool.changed.wait())
                    try:
                        await asyncio.wait(
                            (waiter, reader), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        waiter.cancel()
                    if reader.done():
                        reader.result()  # raises what ended the stream
                    # An acknowledgement may have moved the position past what was sent.
                    sent = max(sent, self.spool.acknowledged)
                batch = await self.spool.read(sent, self.max_events, self.max_bytes)
                if batch is None:  # spooled, yet not readable: never expected; no busy loop
                    raise ConnectionLost(f"the spool cannot be read after event {sent}")
                waiting.append((batch.last, loop.time()))
                request = relay_pb.RelayRequest(
                    first_sequence=batch.first, last_sequence=batch.last, batches=batch.batches
                )
                try:
                    # A server that stopped reading blocks the write (flow control).
                    await asyncio.wait_for(call.write(request), self.ack_timeout)
                except TimeoutError:
                    raise ConnectionLost(
                        f"the api server took no message for {self.ack_timeout:g} s"
                    ) from None
                except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                    # The call ended; its status says why (a failed write may not).
                    raise StreamEnded(await call.code(), await call.details()) from None
                sent = batch.last
        finally:
            reader.cancel()
            if reader.done() and not reader.cancelled():
                reader.exception()  # retrieved: its failure is reported as the stream's
            call.cancel()

    def _refused(self, events: int) -> None:
        """The api server refused ``events`` past its limits; a warning the first time
        (its own log and metrics say which limit), then once per 1,000 more events."""
        before = self.refused
        self.refused += events
        if before == 0 or before // 1_000 != self.refused // 1_000:
            log.warning(
                "relay: the api server at %s refused %d events since start because they "
                "would pass its limits (see its kimball_limit_refusals_total); they are dropped",
                self.address,
                self.refused,
            )

    async def _read_acknowledgements(
        self, call: grpc.aio.StreamStreamCall, waiting: deque[tuple[int, float]]
    ) -> None:
        spool = self.spool
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise StreamEnded(await call.code(), await call.details())
            before = spool.acknowledged
            spool.acknowledge(response.acknowledged_through)
            advanced = spool.acknowledged - before  # 0 for a message acknowledged before
            refused = min(response.refused_events, advanced)
            self.delivered += advanced - refused
            if refused:
                self._refused(refused)
            while waiting and waiting[0][0] <= response.acknowledged_through:
                waiting.popleft()


class RelayCollector(Collector):
    """The spool and the sender, read when scraped."""

    def __init__(self, sender: RelaySender) -> None:
        self._sender = sender

    def collect(self) -> Iterator[Metric]:
        sender = self._sender
        yield GaugeMetricFamily(
            "kimball_relay_spool_events",
            "Events in the spool that the api server has not acknowledged.",
            value=sender.spool.pending,
        )
        yield CounterMetricFamily(
            "kimball_relay_spooled_events",
            "Events accepted into the spool since start.",
            value=sender.spool.spooled,
        )
        yield CounterMetricFamily(
            "kimball_relay_delivered_events",
            "Events the api server acknowledged and applied since start (refused ones aside).",
            value=sender.delivered,
        )
        yield GaugeMetricFamily(
            "kimball_relay_connected",
            "1 while the relay stream to the api server is connected.",
            value=int(sender.connected),
        )
        yield CounterMetricFamily(
            "kimball_relay_refused_events",
            "Events the api server refused because they would pass its limits (dropped).",
            value=sender.refused,
        )
        yield CounterMetricFamily(
            "kimball_relay_stream_failures",
            "Relay streams to the api server that failed (then retried with backoff).",
            value=sender.failures,
        )


def watch_relay(registry: CollectorRegistry, sender: RelaySender) -> None:
    """Expose the relay's figures in ``registry``."""
    registry.register(RelayCollector(sender))
