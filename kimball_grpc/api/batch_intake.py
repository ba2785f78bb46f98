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
- any other call of the gateway is forwarded whole (method, metadata, request bytes) and
  made on the engine's in-process channel, behind the server's own interceptors (tokens,
  start-up gate, error mapping, request metrics).

Validation is the core's (``prepare_events``), run in the worker: a bad batch is refused
there without a trip to the engine. Frames: a request is ``kind, call id, body length`` then
the body; an answer is ``call id, ok, body length`` then the body. Both ends are processes
of one server, started together, so the small control parts travel pickled.
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
    rpc_error,
    streaming_refused,
)
from kimball_grpc.api.readiness import STARTING_MESSAGE
from kimball_grpc.api.servicers import accept_stream
from kimball_grpc.api.status_mapping import status_for
from kimball_grpc.codec.error_details import STATUS_DETAILS_KEY
from kimball_grpc.codec.proto_mapping import event_from_proto
from kimball_grpc.codec.state_codec import encode_records
from kimball_grpc.core.errors import KimballError
from kimball_grpc.core.events import Event, iso_week, prepare_events
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb

log = logging.getLogger(__name__)

TRACK_EVENTS = "/kimball.v1.KimballService/TrackEvents"
STREAM_EVENTS = "/kimball.v1.KimballService/StreamEvents"
BATCH, CALL, METRICS = 1, 2, 3  # request kinds
_REQUEST = struct.Struct("!BII")  # kind, call id, body length
_ANSWER = struct.Struct("!IBI")  # call id, outcome, body length
OK, REFUSED, FAILED = (
    0,
    1,
    2,
)  # outcomes: the answer; a KimballError; (status code name, message, trailing metadata)
ENGINE_GONE = "the engine process of this server is gone; try again shortly"


class IntakeServer:
    """The engine's end: answers the frames of every worker's socket."""

    def __init__(
        self,
        ingestor: Ingestor,
        channel: LocalChannel,
        is_open: Callable[[], bool],
        exposition: Callable[[str], bytes] = lambda path: b"",
    ) -> None:
        self._ingestor = ingestor
        self._channel = channel
        self._is_open = is_open  # False until the state is restored
        self._exposition = exposition  # a metrics path's text (Metrics.exposition)

    async def serve(self, sock: socket.socket) -> None:
        """Answer the frames from one worker until it closes its end."""
        reader, writer = await asyncio.open_connection(sock=sock)
        calls: set[asyncio.Task] = set()
        try:
            while True:
                try:
                    kind, call_id, size = _REQUEST.unpack(await reader.readexactly(_REQUEST.size))
                    body = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the worker stopped
                # Each in its own task: the batches of many requests share an fsync.
                task = asyncio.ensure_future(self._answer(writer, kind, call_id, body))
                calls.add(task)
                task.add_done_callback(calls.discard)
        finally:
            if calls:
                await asyncio.wait(set(calls))
            writer.close()

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
        except KimballError as exc:  # the worker raises it again: its message as here
            answer, outcome = pickle.dumps(exc), REFUSED
        except grpc.aio.AioRpcError as exc:
            trailing = tuple(exc.trailing_metadata() or ())
            answer = pickle.dumps((exc.code().name, exc.details() or "", trailing))
            outcome = FAILED
        except Exception as exc:
            log.exception("REST worker intake: unexpected error")
            answer = pickle.dumps(("UNKNOWN", f"Unexpected {type(exc)}: {exc}", ()))
            outcome = FAILED
        if not writer.is_closing():
            writer.write(_ANSWER.pack(call_id, outcome, len(answer)) + answer)

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
    unary call forwarded. Failures are raised as ``grpc.aio.AioRpcError``, as a channel's."""

    def __init__(
        self,
        sock: socket.socket,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sock = sock
        self._clock = clock
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._next_id = 0
        self._reading: asyncio.Task | None = None

    async def connect(self) -> None:
        """Start reading the engine's answers."""
        reader, self._writer = await asyncio.open_connection(sock=self._sock)
        self._reading = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                call_id, outcome, size = _ANSWER.unpack(await reader.readexactly(_ANSWER.size))
                body = await reader.readexactly(size)
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

    async def _send(self, kind: int, body: bytes, timeout: float | None) -> bytes:
        if self._writer is None or self._writer.is_closing() or self._reading is None:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, ENGINE_GONE)
        if self._reading.done():
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, ENGINE_GONE)
        call_id = self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        answer = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        self._writer.write(_REQUEST.pack(kind, call_id, len(body)) + body)
        try:
            async with asyncio.timeout(timeout):
                outcome, data = await answer
        except TimeoutError:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            self._waiting.pop(call_id, None)
        if outcome == OK:
            return data
        if outcome == REFUSED:
            raise pickle.loads(data)
        code, details, trailing = pickle.loads(data)
        raise rpc_error(grpc.StatusCode[code], details, trailing)

    async def _accept(self, events: Sequence[Event]) -> int:
        """Validate ``events`` here (the core's rules), then have the engine log and apply
        them; the number accepted once they are in the log."""
        records = prepare_events(events, iso_week(self._clock()))
        if not records:
            return 0
        body = pickle.dumps(
            (encode_records(records), [(e.user_id, e.datetime) for e in events]),
            pickle.HIGHEST_PROTOCOL,
        )
        answer = await self._send(BATCH, body, timeout=None)  # the call's own timeout holds
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
                    events = [event_from_proto(e) for e in request.events]
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
        are counted there: the workers hand it their batches and calls)."""
        return await self._send(METRICS, path.encode(), timeout=None)

    async def close(self) -> None:
        """Close this end: the engine sees the worker go."""
        if self._writer is not None:
            self._writer.close()
        if self._reading is not None:
            await asyncio.gather(self._reading, return_exceptions=True)


def _as_status(error: KimballError) -> tuple[grpc.StatusCode, str, Metadata]:
    """What the server's interceptor makes of ``error``: its status and details."""
    code, message, details = status_for(error)
    return code, message, ((STATUS_DETAILS_KEY, details),)
