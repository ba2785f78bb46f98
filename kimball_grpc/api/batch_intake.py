"""The link between REST worker processes and the engine process that owns the state.

With ``rest_workers`` > 0, the REST gateway runs in worker processes that share the
listening socket; the engine process keeps the state, the write-ahead log and gRPC. Each
worker holds one stream socket to the engine (a socket pair made before it starts), over
which:

- an ingest batch (``TrackEvents``, each message of ``StreamEvents``) arrives validated,
  hashed and encoded by the worker: the ``RecordBatch`` bytes the log keeps, with each
  event's user id and datetime (for subscribers and event targets). The engine checks the
  growth limits, appends those bytes to its log as they are (fsync, group commit), applies
  them and answers; the worker answers its client only then, so an acknowledged event is in
  the log as with the in-process gateway;
- a scrape of ``/metrics`` is answered with the engine's metrics;
- the worker's REST counts (requests by route, connections, timeouts, refused events) are
  handed over in batches, a frame every ``COUNTS_SECONDS`` at most, and counted in the
  engine's metrics (no answer);
- any other call of the gateway is forwarded whole (method, metadata, request bytes) and
  made on the engine's in-process channel, behind the server's own interceptors (tokens,
  start-up gate, error mapping, request metrics); a server-streaming call (the event
  stream) too: its responses come back one frame each, at most ``STREAM_WINDOW`` ahead of
  what the worker has read (it grants more as it reads), so a slow client holds the
  stream back in the engine, as an in-process reader would, rather than filling memory.

Validation is the core's (``prepare_events``), run in the worker: a bad batch is refused
there without a trip to the engine. Frames: a request is ``kind, call id, body length`` then
the body; an answer is ``call id, outcome, body length`` then the body (a stream's: ``STARTED``
once, ``ITEM`` per response, then its end as a unary answer). Both ends are processes of
one server, started together, so the small control parts travel pickled.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc

from kimball_grpc.api.ingest import Ingestor
from kimball_grpc.api.local_channel import (
    ChannelCalls,
    LocalChannel,
    Metadata,
    StreamCall,
    rpc_error,
    streaming_refused,
)
from kimball_grpc.api.readiness import STARTING_MESSAGE
from kimball_grpc.api.servicers import accept_stream
from kimball_grpc.api.status_mapping import status_for
from kimball_grpc.codec.error_details import STATUS_DETAILS_KEY
from kimball_grpc.codec.proto_mapping import request_event_fields
from kimball_grpc.codec.state_codec import encode_records
from kimball_grpc.config.logs import current_call
from kimball_grpc.core.errors import KimballError
from kimball_grpc.core.events import EventFields, iso_week, prepare_events
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.metrics import HTTP_METRICS, HttpMetrics

log = logging.getLogger(__name__)

TRACK_EVENTS = "/kimball.v1.KimballService/TrackEvents"
STREAM_EVENTS = "/kimball.v1.KimballService/StreamEvents"
# Request kinds: a batch; a unary call; a metrics scrape; counts (no answer); a
# server-streaming call; its cancel; more credit for it (the count, ``_CREDIT``).
BATCH, CALL, METRICS, COUNTS, STREAM, CANCEL, CREDIT = 1, 2, 3, 4, 5, 6, 7
_REQUEST = struct.Struct("!BII")  # kind, call id, body length
_ANSWER = struct.Struct("!IBI")  # call id, outcome, body length
_CREDIT = struct.Struct("!I")
# Outcomes: the answer (a stream's end); a KimballError; (status code name, message,
# trailing metadata); a stream's response; a stream in place (its headers).
OK, REFUSED, FAILED, ITEM, STARTED = 0, 1, 2, 3, 4
ENGINE_GONE = "the engine process of this server is gone; try again shortly"
# Responses of one stream sent ahead of the worker's reading: enough to keep a fast reader
# busy, few enough that a slow one holds the stream back in the engine.
STREAM_WINDOW = 64
# A worker hands its REST counts over at most this long after they happen.
COUNTS_SECONDS = 0.1


class IntakeServer:
    """The engine's end: answers the frames of every worker's socket."""

    def __init__(
        self,
        ingestor: Ingestor,
        channel: LocalChannel,
        is_open: Callable[[], bool],
        exposition: Callable[[str], bytes] = lambda path: b"",
        metrics: HttpMetrics | None = None,
    ) -> None:
        """``metrics``: where the workers' REST counts are counted."""
        self._ingestor = ingestor
        self._metrics = metrics
        self._channel = channel
        self._is_open = is_open  # False until the state is restored
        self._exposition = exposition  # a metrics path's text (Metrics.exposition)

    async def serve(self, sock: socket.socket) -> None:
        """Answer the frames from one worker until it closes its end."""
        reader, writer = await asyncio.open_connection(sock=sock)
        calls: set[asyncio.Task] = set()
        streams: dict[int, tuple[asyncio.Task, asyncio.Semaphore]] = {}
        connections = 0  # the worker's REST connections open, as it counted them
        try:
            while True:
                try:
                    kind, call_id, size = _REQUEST.unpack(await reader.readexactly(_REQUEST.size))
                    body = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the worker stopped
                if kind == COUNTS:
                    connections += self._count(body)
                    continue
                if kind in (CANCEL, CREDIT):
                    stream = streams.get(call_id)
                    if stream is not None and kind == CANCEL:
                        stream[0].cancel()
                    elif stream is not None:
                        for _ in range(_CREDIT.unpack(body)[0]):
                            stream[1].release()
                    continue
                if kind == STREAM:
                    credit = asyncio.Semaphore(STREAM_WINDOW)
                    task = asyncio.ensure_future(self._stream(writer, call_id, body, credit))
                    streams[call_id] = (task, credit)
                    task.add_done_callback(lambda _, call_id=call_id: streams.pop(call_id, None))
                else:  # each in its own task: the batches of many requests share an fsync
                    task = asyncio.ensure_future(self._answer(writer, kind, call_id, body))
                calls.add(task)
                task.add_done_callback(calls.discard)
        finally:
            for task, _ in list(streams.values()):  # nobody reads them any more
                task.cancel()
            if connections and self._metrics is not None:  # a worker gone closed them all
                self._metrics.open_http_connections(-connections)
            if calls:
                await asyncio.wait(set(calls))
            writer.close()

    def _count(self, body: bytes) -> int:
        """Count a worker's REST counts here; the change in its open connections."""
        opened = 0
        for name, args in pickle.loads(body):
            if name not in HTTP_METRICS:
                continue
            if name == "open_http_connections":
                opened += args[0]
            if self._metrics is not None:
                getattr(self._metrics, name)(*args)
        return opened

    async def _answer(
        self, writer: asyncio.StreamWriter, kind: int, call_id: int, body: bytes
    ) -> None:
        try:
            if kind == BATCH:
                answer = await self._batch(body)
            elif kind == CALL:
                answer = await self._call(body)
            else:  # the metrics are here: in a thread, as the in-process gateway does
                answer = await asyncio.to_thread(self._exposition, body.decode())
            outcome = OK
        except Exception as exc:
            outcome, answer = _failure(exc)
        _write(writer, call_id, outcome, answer)

    async def _stream(
        self, writer: asyncio.StreamWriter, call_id: int, body: bytes, credit: asyncio.Semaphore
    ) -> None:
        """A server-streaming call made here, its responses sent as ``credit`` allows."""
        method, metadata, request = pickle.loads(body)
        responses = self._channel.unary_stream(method)(request, metadata=metadata)
        try:
            await responses.initial_metadata()
            if not responses.done():  # else it was refused: its error is the end
                _write(writer, call_id, STARTED, b"")
            while (response := await responses.read()) is not grpc.aio.EOF:
                await credit.acquire()
                _write(writer, call_id, ITEM, response)
            outcome, answer = OK, b""
        except Exception as exc:
            outcome, answer = _failure(exc)
        finally:
            responses.cancel()
        _write(writer, call_id, outcome, answer)

    async def _batch(self, body: bytes) -> bytes:
        if not self._is_open():
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, STARTING_MESSAGE)
        payload, origins = pickle.loads(body)
        accepted = await self._ingestor.accept_encoded(payload, origins)
        return pb.TrackEventsResponse(accepted=accepted).SerializeToString()

    async def _call(self, body: bytes) -> bytes:
        method, metadata, timeout, request = pickle.loads(body)
        call = self._channel.unary_unary(method)
        return await call(request, metadata=metadata, timeout=timeout)


class IntakeChannel(ChannelCalls):
    """A worker's end, shaped as the part of ``grpc.aio.Channel`` the REST gateway uses:
    ``TrackEvents`` and ``StreamEvents`` validated here and sent as batches, any other
    unary or server-streaming call forwarded. Failures are raised as
    ``grpc.aio.AioRpcError``, as a channel's."""

    # ``TrackEvents`` may be called with its events (a list of ``Event``) in place of its
    # request message: the gateway reads plain JSON events straight into them.
    takes_events = frozenset((TRACK_EVENTS,))

    def __init__(
        self,
        sock: socket.socket,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sock = sock
        self._clock = clock
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._streams: dict[int, ForwardedStream] = {}
        self._next_id = 0
        self._reading: asyncio.Task | None = None
        self._counts: list[tuple[str, tuple]] = []
        self.metrics = ForwardedMetrics(self)

    async def connect(self) -> None:
        """Start reading the engine's answers."""
        reader, self._writer = await asyncio.open_connection(sock=self._sock)
        self._reading = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                call_id, outcome, size = _ANSWER.unpack(await reader.readexactly(_ANSWER.size))
                body = await reader.readexactly(size)
                stream = self._streams.get(call_id)
                if stream is not None:
                    stream.receive(outcome, body)
                    continue
                waiting = self._waiting.pop(call_id, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result((outcome, body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            gone = pickle.dumps(("UNAVAILABLE", ENGINE_GONE, ()))
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_result((FAILED, gone))
            self._waiting.clear()
            for stream in list(self._streams.values()):
                stream.receive(FAILED, gone)

    def _frame(self, kind: int, body: bytes) -> int:
        """Send a request of ``kind``; its call id."""
        if self._writer is None or self._writer.is_closing() or self._reading is None:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, ENGINE_GONE)
        if self._reading.done():
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, ENGINE_GONE)
        call_id = self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        self._writer.write(_REQUEST.pack(kind, call_id, len(body)) + body)
        return call_id

    def _tell(self, kind: int, call_id: int, body: bytes = b"") -> None:
        """Send a frame about call ``call_id`` that is not answered (a cancel, credit)."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(_REQUEST.pack(kind, call_id, len(body)) + body)

    async def _send(self, kind: int, body: bytes, timeout: float | None) -> bytes:
        call_id = self._frame(kind, body)
        answer = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                outcome, data = await answer
        except TimeoutError:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            self._waiting.pop(call_id, None)
        return _result(outcome, data)

    def count(self, name: str, args: tuple) -> None:
        """Count ``name(*args)`` (one of ``HTTP_METRICS``) in the engine's metrics, handed
        over with the other counts of the next ``COUNTS_SECONDS``."""
        if not self._counts:
            asyncio.get_running_loop().call_later(COUNTS_SECONDS, self._hand_over_counts)
        self._counts.append((name, args))

    def _hand_over_counts(self) -> None:
        if self._counts:
            self._tell(COUNTS, 0, pickle.dumps(self._counts, pickle.HIGHEST_PROTOCOL))
            self._counts = []

    def _stream(self, call: StreamCall) -> ForwardedStream:
        """The call made in the engine process, its responses forwarded here."""
        serialize = call.request_serializer or (lambda message: message)
        body = pickle.dumps((call.method, call.metadata, serialize(call.request)))
        try:
            call_id = self._frame(STREAM, body)
        except grpc.aio.AioRpcError as error:
            return ForwardedStream(self, None, call.response_deserializer, error)
        stream = self._streams[call_id] = ForwardedStream(self, call_id, call.response_deserializer)
        return stream

    def _stream_ended(self, call_id: int, cancelled: bool) -> None:
        if self._streams.pop(call_id, None) is not None and cancelled:
            self._tell(CANCEL, call_id)

    async def _accept(self, events: Sequence[EventFields]) -> int:
        """Validate ``events`` here (the core's rules), then have the engine log and apply
        them; the number accepted once they are in the log. Refused events are counted
        once: here if this check refuses them, else in the engine."""
        try:
            records = prepare_events(events, iso_week(self._clock()))
        except KimballError as error:
            self.count("refuse_events", (error.grpc_code, len(events)))
            _counted()
            raise
        if not records:
            return 0
        body = pickle.dumps(
            # Each event's user id and datetime (fields 1 and 4: an Event or a plain tuple).
            (encode_records(records), [(e[1], e[4]) for e in events]),
            pickle.HIGHEST_PROTOCOL,
        )
        try:
            answer = await self._send(BATCH, body, timeout=None)  # the call's timeout holds
        except KimballError:
            _counted()
            raise
        return pb.TrackEventsResponse.FromString(answer).accepted

    async def _call(
        self,
        method: str,
        kind: str,
        request: Any,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> Any:
        """``TrackEvents`` and ``StreamEvents`` (each message one batch, in order, as the
        server's own handler takes them) validated here; any other unary call forwarded."""
        deserialize = response_deserializer or (lambda data: data)
        if kind == "unary_unary" and method != TRACK_EVENTS:
            serialize = request_serializer or (lambda message: message)
            body = pickle.dumps((method, tuple(metadata or ()), timeout, serialize(request)))
            return deserialize(await self._send(CALL, body, timeout))
        if kind == "stream_unary" and method != STREAM_EVENTS:
            streaming_refused()
        try:
            async with asyncio.timeout(timeout):
                if kind == "unary_unary":
                    events = request if isinstance(request, list) else request_event_fields(request)
                    response = pb.TrackEventsResponse(accepted=await self._accept(events))
                else:
                    response = await accept_stream(request, self._accept)
        except KimballError as exc:
            raise rpc_error(*_as_status(exc)) from None
        except TimeoutError:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        return deserialize(response.SerializeToString())

    async def gone(self) -> None:
        """Return once the link to the engine process is closed (it stopped or died)."""
        if self._reading is not None:
            await asyncio.shield(self._reading)

    async def exposition(self, path: str) -> bytes:
        """The text of the metrics ``path`` in the engine process (every process's metrics
        are counted there: the workers hand it their batches, calls and counts; this
        worker's counts so far first)."""
        self._hand_over_counts()
        return await self._send(METRICS, path.encode(), timeout=None)

    async def close(self) -> None:
        """Close this end: the engine sees the worker go."""
        if self._writer is not None:
            self._writer.close()
        if self._reading is not None:
            await asyncio.gather(self._reading, return_exceptions=True)


class ForwardedStream:
    """A server-streaming call made in the engine process for a worker, used as
    ``grpc.aio.UnaryStreamCall`` is: ``initial_metadata``, ``read`` (``grpc.aio.EOF`` at
    the end), ``done``, ``cancel``. Its responses wait here (at most ``STREAM_WINDOW``: the
    engine sends no more until this end has read some and said so)."""

    def __init__(
        self,
        channel: IntakeChannel,
        call_id: int | None,
        deserialize: Callable[[bytes], Any] | None,
        error: grpc.aio.AioRpcError | None = None,
    ) -> None:
        """``error``: the call could not be sent (its end, at once)."""
        self._channel = channel
        self._call_id = call_id
        self._deserialize = deserialize or (lambda data: data)
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._started = asyncio.get_running_loop().create_future()
        self._ended = False
        self._unthanked = 0  # responses read since credit was last granted
        if error is not None:
            self._end(error)

    def receive(self, outcome: int, body: bytes) -> None:
        """A frame of this stream from the engine."""
        if outcome == STARTED:
            self._start()
        elif outcome == ITEM:
            self._responses.put_nowait(self._deserialize(body))
        else:
            try:
                _result(outcome, body)
                end: Any = grpc.aio.EOF
            except grpc.aio.AioRpcError as error:
                end = error
            except KimballError as error:
                end = rpc_error(*_as_status(error))
            self._end(end)

    def _start(self) -> None:
        if not self._started.done():
            self._started.set_result(None)

    def _end(self, end: Any) -> None:
        if self._call_id is not None:
            self._channel._stream_ended(self._call_id, cancelled=False)
        self._ended = True
        self._responses.put_nowait(end)
        self._start()

    async def initial_metadata(self) -> grpc.aio.Metadata:
        """Once the stream is in place in the engine, or ended."""
        await asyncio.shield(self._started)
        return grpc.aio.Metadata()

    def done(self) -> bool:
        """Whether the call ended with no response left to read."""
        return self._ended and self._responses.qsize() == 1

    async def read(self) -> Any:
        """The next response; ``grpc.aio.EOF`` after the last; the call's error if it failed."""
        item = await self._responses.get()
        if isinstance(item, grpc.aio.AioRpcError) or item is grpc.aio.EOF:
            self._responses.put_nowait(item)  # read again: the same end, as grpc.aio does
            if item is not grpc.aio.EOF:
                raise item
            return item
        self._unthanked += 1
        if self._unthanked >= STREAM_WINDOW // 2 and self._call_id is not None:
            self._channel._tell(CREDIT, self._call_id, _CREDIT.pack(self._unthanked))
            self._unthanked = 0
        return item

    def cancel(self) -> bool:
        """End the call here and in the engine."""
        if self._ended:
            return False
        self._ended = True
        if self._call_id is not None:
            self._channel._stream_ended(self._call_id, cancelled=True)
        return True


class ForwardedMetrics:
    """The ``HttpMetrics`` of a REST worker process: each count handed to the engine
    process (``IntakeChannel.count``), which counts it in its metrics."""

    def __init__(self, channel: IntakeChannel) -> None:
        self._channel = channel

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name not in HTTP_METRICS:
            raise AttributeError(name)
        return lambda *args: self._channel.count(name, args)


def _counted() -> None:
    """Mark the request being served as having its events counted (not again as one
    refused request)."""
    call = current_call.get()
    if call is not None:
        call.events_counted = True


def _result(outcome: int, data: bytes) -> bytes:
    """An answer's body, or its failure raised (a ``KimballError``, an ``AioRpcError``)."""
    if outcome == OK:
        return data
    if outcome == REFUSED:
        raise pickle.loads(data)
    code, details, trailing = pickle.loads(data)
    raise rpc_error(grpc.StatusCode[code], details, trailing)


def _write(writer: asyncio.StreamWriter, call_id: int, outcome: int, body: bytes) -> None:
    if not writer.is_closing():
        writer.write(_ANSWER.pack(call_id, outcome, len(body)) + body)


def _failure(error: Exception) -> tuple[int, bytes]:
    """The outcome and body that tell the worker of ``error``."""
    if isinstance(error, KimballError):  # the worker raises it again: its message as here
        return REFUSED, pickle.dumps(error)
    if isinstance(error, grpc.aio.AioRpcError):
        trailing = tuple(error.trailing_metadata() or ())
        return FAILED, pickle.dumps((error.code().name, error.details() or "", trailing))
    log.exception("REST worker intake: unexpected error", exc_info=error)
    return FAILED, pickle.dumps(("UNKNOWN", f"Unexpected {type(error)}: {error}", ()))


def _as_status(error: KimballError) -> tuple[grpc.StatusCode, str, Metadata]:
    """What the server's interceptor makes of ``error``: its status and details."""
    code, message, details = status_for(error)
    return code, message, ((STATUS_DETAILS_KEY, details),)
