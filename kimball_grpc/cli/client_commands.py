"""The client side of the ``kimball`` command: track, load and query Kimball over gRPC.

``cli.py`` wires the arguments; the commands here call a running Kimball with the
synchronous gRPC API and print plain-text tables (or JSON) on stdout. Every error
a user can cause, from an unreachable server to a bad input line, becomes one
``kimball: ...`` line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from kimball_grpc.codec.error_details import error_metadata
from kimball_grpc.codec.original_specs import OriginalSpecsError, decode_original_specs
from kimball_grpc.codec.proto_mapping import counter_type_name, spec_to_proto
from kimball_grpc.config.tls import ClientTls
from kimball_grpc.core.errors import InvalidArgument
from kimball_grpc.core.limits import MAX_MESSAGE_BYTES, MAX_PAGE_SIZE, MAX_RESPONSE_BYTES_CEILING
from kimball_grpc.core.names import check_name, check_text, check_value
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.outbound.channels import channel_credentials

DEFAULT_TARGET = "127.0.0.1:50051"
CSV_HEADER = ["user_id", "event_name"]
JSON_KEYS = frozenset({"user_id", "event_name", "namespace", "value", "ensure_goal", "datetime"})
FORMATS = ("auto", "csv", "jsonl")


class CommandError(Exception):
    """A failure to report in one line (without the ``kimball:`` prefix)."""


class BadLine(CommandError):
    """An input line of ``kimball load`` that is not an event."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")


@dataclass(frozen=True)
class Connection:
    """Where Kimball listens and how to call it."""

    target: str = DEFAULT_TARGET
    namespace: str = ""
    token: str | None = None
    timeout: float | None = None
    tls: ClientTls | None = None  # None: plain text

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata: the bearer token when there is one."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


@dataclass(frozen=True)
class LoadOptions:
    """How ``kimball load`` reads its input and sends it."""

    format: str = "auto"
    goal: bool = False
    prefix: str = ""
    batch: int = 1000
    progress_interval: float = 10.0  # seconds between plain progress lines


def run(connection: Connection, command: Callable[[], None]) -> int:
    """Run ``command``: 0 when it succeeds, else a one-line message on stderr and 1."""
    try:
        command()
    except grpc.RpcError as error:
        print(f"kimball: {describe_rpc_error(error, connection)}", file=sys.stderr)
        return 1
    except CommandError as error:
        print(f"kimball: {error}", file=sys.stderr)
        return 1
    return 0


def describe_rpc_error(error: grpc.RpcError, connection: Connection) -> str:
    """What went wrong with a call, for a person: the status, its message and ErrorInfo."""
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        hint = _tls_hint(error, connection)
        return f"cannot reach Kimball at {connection.target} (UNAVAILABLE){hint}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (
            f"no answer from Kimball at {connection.target} in time (DEADLINE_EXCEEDED); "
            "try a longer --timeout"
        )
    text = f"{code.name}: {error.details()}"
    details = dict(sorted(error_metadata(error.trailing_metadata()).items()))
    if details:
        text += " (" + ", ".join(f"{key}: {value}" for key, value in details.items()) + ")"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        text += "; check --token or KIMBALL_TOKEN"
    return text


def plain_or_tls_channel(
    target: str, tls: ClientTls | None, options: Sequence[tuple[str, int]] = ()
) -> grpc.Channel:
    """A blocking channel to ``target``: over TLS with ``tls``, else in plain text."""
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, channel_credentials(tls), options=options)


def _tls_hint(error: grpc.RpcError, connection: Connection) -> str:
    """What to check when a connection failed in a way TLS settings explain."""
    details = error.details() or ""
    if "handshake failed" in details.lower():
        return (
            "; the TLS handshake failed: check that --tls-ca-file holds the CA that signed "
            "the server's certificate, for the name in --target"
        )
    if "Socket closed" not in details:  # the server closed the connection at once
        return ""
    if connection.tls is None:
        return "; if the server uses TLS, give --tls-ca-file"
    if connection.tls.certificate_chain is None:
        return (
            "; if the server asks for a client certificate, give --tls-client-cert-file and "
            "--tls-client-key-file"
        )
    return ""


def _channel(connection: Connection) -> grpc.Channel:
    """A channel to Kimball that takes any answer a Kimball server may send (whatever its
    max_response_bytes); what is sent is as small as the server takes."""
    return plain_or_tls_channel(
        connection.target,
        connection.tls,
        options=[
            ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES_CEILING),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )


def _call(connection: Connection, method: str, request: Message) -> Any:
    """The response of one unary call of ``KimballService`` ``method``."""
    with _channel(connection) as channel:
        rpc = getattr(pb_grpc.KimballServiceStub(channel), method)
        return rpc(request, timeout=connection.timeout, metadata=connection.metadata())


def _every_page(connection: Connection, method: str, request: Message, field: str) -> Any:
    """Every page of the paged read ``method`` as one response, all the items in ``field``
    (asked for in pages: a whole answer could pass the server's max_response_bytes).
    ``--timeout`` applies to each page."""
    request.page_size = MAX_PAGE_SIZE
    with _channel(connection) as channel:
        rpc = getattr(pb_grpc.KimballServiceStub(channel), method)
        whole = None
        while True:
            page = rpc(request, timeout=connection.timeout, metadata=connection.metadata())
            if whole is None:
                whole = page
            else:
                getattr(whole, field).extend(getattr(page, field))
            if not page.next_page_token:
                whole.next_page_token = ""
                return whole
            request.page_token = page.next_page_token


def parse_datetime(text: str) -> Timestamp:
    """An RFC 3339 timestamp with a time zone, or ``ValueError`` saying what is expected."""
    stamp = Timestamp()
    try:
        stamp.FromJsonString(text)
    except ValueError:
        raise ValueError(
            f"datetime must be RFC 3339 with a time zone, like 2024-01-07T23:30:00Z, got {text!r}"
        ) from None
    return stamp


def track(
    connection: Connection,
    event_name: str,
    user_id: str,
    *,
    value: float | None = None,
    goal: bool = False,
    when: Timestamp | None = None,
) -> None:
    """Track one event: user ``user_id`` did ``event_name``."""
    event = pb.Event(
        namespace=connection.namespace,
        event_name=event_name,
        user_id=user_id,
        value=value,
        datetime=when,
        ensure_goal=goal,
    )
    _call(connection, "TrackEvent", pb.TrackEventRequest(event=event))
    print(f"tracked {event_name} for {user_id}")


def load(connection: Connection, source: str, options: LoadOptions) -> None:
    """Stream the events of ``source`` (a path, or ``-`` for stdin) to Kimball in batches,
    showing the progress on stderr (see ``progress``).

    Stops at the first bad line. The events before it are loaded (the server
    applies each message as it arrives) and the error says how many.
    """
    with _open(source) as stream, progress(_input_size(stream), options.progress_interval) as shown:
        reading = _CountedLines(stream)
        events = _events(_decoded(reading), connection.namespace, options)
        upload = _Upload(events, options.batch, lambda sent: shown(sent, reading.read))
        with _channel(connection) as channel:
            response = pb_grpc.KimballServiceStub(channel).StreamEvents(
                iter(upload), timeout=connection.timeout, metadata=connection.metadata()
            )
    if upload.bad_line:
        raise CommandError(
            f"{upload.bad_line}; stopped there, after loading {_events_count(response.accepted)}"
        )
    print(f"loaded {_events_count(response.accepted)}")


def _input_size(stream: BinaryIO) -> int | None:
    """The bytes left to read in ``stream`` if it is a regular file (a path, or stdin
    redirected from one), else None: a pipe's size is unknown."""
    try:
        status = os.fstat(stream.fileno())
        regular = stat.S_ISREG(status.st_mode)
        return max(status.st_size - stream.tell(), 0) if regular else None
    except (OSError, ValueError):
        return None


class _CountedLines:
    """The lines of a binary stream, counting the bytes read so far (the progress)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self.read += len(line)
            yield line


Shown = Callable[[int, int], None]  # (events sent, bytes read) -> None


def progress(size: int | None, interval: float) -> AbstractContextManager[Shown]:
    """How ``kimball load`` shows its progress on stderr: on a terminal, a bar redrawn in
    place (percent, events/s, time left; without a size, the count and rate only); else
    a plain line at most every ``interval`` seconds, for logs."""
    if sys.stderr.isatty():
        return _ProgressBar(size)
    return nullcontext(_PlainProgress(size, interval, sys.stderr).show)


class _PlainProgress:
    """Progress as plain lines: ``sent 2,000 events, 40% of the input, 9,512 events/s,
    about 3 s left``, one at most every ``interval`` seconds."""

    def __init__(self, size: int | None, interval: float, out: TextIO) -> None:
        self._size = size
        self._interval = interval
        self._out = out
        self._start = time.monotonic()
        self._last = self._start

    def show(self, sent: int, read: int) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        rate = sent / max(now - self._start, 1e-9)
        parts = [f"sent {sent:,} " + ("event" if sent == 1 else "events")]
        if self._size:
            share = min(read / self._size, 1.0)
            parts.append(f"{share:.0%} of the input")
        parts.append(f"{rate:,.0f} events/s")
        if self._size and read > 0:
            left = (now - self._start) * (self._size - read) / read
            parts.append(f"about {left:.0f} s left")
        print("kimball: " + ", ".join(parts), file=self._out, flush=True)


class _ProgressBar(AbstractContextManager[Shown]):
    """A rich progress bar on stderr over the bytes of the input."""

    def __init__(self, size: int | None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [
            TextColumn("loading"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[sent]:,} events"),
            TextColumn("{task.fields[rate]:,.0f} events/s"),
            TimeRemainingColumn() if size else TimeElapsedColumn(),
        ]
        self._bar = Progress(*columns, console=Console(stderr=True), transient=False)
        self._task = self._bar.add_task("load", total=size, sent=0, rate=0.0)
        self._start = time.monotonic()

    def __enter__(self) -> Shown:
        self._bar.start()
        return self._show

    def _show(self, sent: int, read: int) -> None:
        rate = sent / max(time.monotonic() - self._start, 1e-9)
        self._bar.update(self._task, completed=read, sent=sent, rate=rate)

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


def _events_count(count: int) -> str:
    return f"{count} event" if count == 1 else f"{count} events"


def _open(source: str) -> AbstractContextManager[BinaryIO]:
    """The input as bytes: a file, or stdin for ``-``."""
    if source == "-":
        return nullcontext(sys.stdin.buffer)
    try:
        return open(source, "rb")
    except OSError as error:
        raise CommandError(f"cannot read {source}: {error.strerror}") from None


def _decoded(stream: Iterable[bytes]) -> Iterator[str]:
    """Lines as text; a line that is not UTF-8 is a ``BadLine``. A leading BOM is dropped."""
    for number, raw in enumerate(stream, 1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise BadLine(number, "not UTF-8 text") from None


def _events(lines: Iterator[str], namespace: str, options: LoadOptions) -> Iterator[pb.Event]:
    """The events of CSV or JSON lines (``auto``: JSON if the first non-blank line is ``{``)."""
    form = options.format
    if form == "auto":
        head: list[str] = []
        for line in lines:
            head.append(line)
            if line.strip():
                break
        form = "jsonl" if head and head[-1].lstrip().startswith("{") else "csv"
        lines = itertools.chain(head, lines)
    parse = _csv_events if form == "csv" else _json_events
    return parse(lines, namespace, options)


def _csv_events(lines: Iterable[str], namespace: str, options: LoadOptions) -> Iterator[pb.Event]:
    """Events of ``user_id,event_name`` rows; a first row equal to that header is skipped."""
    reader = csv.reader(lines, skipinitialspace=True)
    for index, row in enumerate(reader):
        if not row or (index == 0 and row == CSV_HEADER):
            continue
        try:
            if len(row) != 2:
                raise InvalidArgument(f"expected 2 fields, user_id,event_name; got {len(row)}")
            yield _event(options, namespace=namespace, user_id=row[0], event_name=row[1])
        except InvalidArgument as error:
            raise BadLine(reader.line_num, error.message) from None


def _json_events(lines: Iterable[str], namespace: str, options: LoadOptions) -> Iterator[pb.Event]:
    """Events of JSON objects, one per line; blank lines are skipped."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield _event(options, **{"namespace": namespace, **_json_object(line)})
        except InvalidArgument as error:
            raise BadLine(number, error.message) from None


def _json_object(line: str) -> dict[str, Any]:
    """One JSON line as an object with known keys only; null values are left out."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"not JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(data, dict):
        raise InvalidArgument("expected a JSON object")
    unknown = sorted(set(data) - JSON_KEYS)
    if unknown:
        known = ", ".join(sorted(JSON_KEYS))
        raise InvalidArgument(f"unknown key {unknown[0]!r} (known keys: {known})")
    return {key: value for key, value in data.items() if value is not None}


def _event(
    options: LoadOptions,
    *,
    namespace: Any,
    user_id: Any = "",
    event_name: Any = "",
    value: Any = None,
    ensure_goal: Any = False,
    datetime: Any = None,
) -> pb.Event:
    """An event checked as the server checks it, so that a bad line is named by its number."""
    if not isinstance(ensure_goal, bool):
        raise InvalidArgument(f"ensure_goal must be true or false, got {ensure_goal!r}")
    event = pb.Event(
        namespace=check_name("namespace", namespace, required=False),
        event_name=check_name("event_name", options.prefix + check_name("event_name", event_name)),
        user_id=check_text("user_id", user_id),
        ensure_goal=options.goal or ensure_goal,
    )
    if value is not None:
        event.value = check_value(value)
    if datetime is not None:
        if not isinstance(datetime, str):
            raise InvalidArgument(f"datetime must be a string, got {datetime!r}")
        try:
            event.datetime.CopyFrom(parse_datetime(datetime))
        except ValueError as error:
            raise InvalidArgument(str(error)) from None
    return event


class _Upload:
    """The ``StreamEvents`` messages of a load, ``batch`` events each.

    gRPC consumes this from its own thread, where an exception would cancel the
    call and log a traceback; so a bad line ends the stream cleanly instead, and
    is kept in ``bad_line`` for the caller to report.
    """

    def __init__(
        self, events: Iterator[pb.Event], batch: int, progress: Callable[[int], None]
    ) -> None:
        self._events = events
        self._batch = batch
        self._progress = progress
        self.sent = 0
        self.bad_line: BadLine | None = None

    def __iter__(self) -> Iterator[pb.TrackEventsRequest]:
        batch: list[pb.Event] = []
        try:
            for event in self._events:
                batch.append(event)
                if len(batch) == self._batch:
                    yield self._message(batch)
                    batch = []
        except BadLine as error:
            self.bad_line = error
        if batch:
            yield self._message(batch)

    def _message(self, batch: list[pb.Event]) -> pb.TrackEventsRequest:
        self.sent += len(batch)
        self._progress(self.sent)
        return pb.TrackEventsRequest(events=batch)


def analytics(connection: Connection, *, as_json: bool = False) -> None:
    """Print the counters of the namespace, every page."""
    request = pb.GetAnalyticsRequest(namespace=connection.namespace)
    _show(_every_page(connection, "GetAnalytics", request, "counts"), as_json, _counters_table)


def goals(connection: Connection, *, as_json: bool = False) -> None:
    """Print the goals of the namespace, every page."""
    request = pb.ListGoalsRequest(namespace=connection.namespace)
    _show(_every_page(connection, "ListGoals", request, "goals"), as_json, _goals_table)


def predictions(
    connection: Connection, events: Sequence[str] = (), user_id: str = "", *, as_json: bool = False
) -> None:
    """Print predictions: per goal and event, or for a set of events, or for a user's events."""
    request = pb.GetPredictionsRequest(
        namespace=connection.namespace, events=events, user_id=user_id
    )
    table = _naive_bayes_table if events or user_id else _event_predictions_table
    _show(_call(connection, "GetPredictions", request), as_json, table)


def nudges(connection: Connection, goal: str, user_id: str, *, as_json: bool = False) -> None:
    """Print the events of ``goal`` that ``user_id`` has not done, most predictive first."""
    request = pb.GetNudgesRequest(namespace=connection.namespace, goal=goal, user_id=user_id)
    _show(_call(connection, "GetNudges", request), as_json, _nudges_table)


def _show(response: Message, as_json: bool, table: Callable[[Any], str]) -> None:
    print(json.dumps(plain_json(response), indent=2) if as_json else table(response))


def plain_json(message: Message) -> dict[str, Any]:
    """``message`` as JSON data a script can use as it is: every field, with its default
    value too; proto field names; numbers as numbers (protobuf's JSON mapping writes
    64-bit integers as strings, for JavaScript's sake)."""
    data = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _numbers(message, data)


_INTEGERS_64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _numbers(message: Message, data: dict[str, Any]) -> dict[str, Any]:
    """``data``, the JSON mapping of ``message``, with its 64-bit integers as ints."""
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue
        value, item = data[field.name], getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            data[field.name] = {
                key: _field_value(value_field, item[_map_key(item, key)], entry)
                for key, entry in value.items()
            }
        elif field.is_repeated:
            data[field.name] = [_field_value(field, m, v) for m, v in zip(item, value, strict=True)]
        else:
            data[field.name] = _field_value(field, item, value)
    return data


def _map_key(mapping: Any, key: str) -> Any:
    """The key of a protobuf map whose JSON key is ``key`` (JSON keys are strings)."""
    return next(k for k in mapping if str(k).lower() == key.lower())


def _field_value(field: FieldDescriptor, item: Any, value: Any) -> Any:
    if field.type in _INTEGERS_64:
        return int(value)
    well_known = field.message_type is not None and field.message_type.full_name.startswith(
        "google.protobuf."
    )
    if field.message_type is not None and not well_known:
        return _numbers(item, value)
    return value


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """Rows under headers in aligned columns, as kubectl prints them (rich lays them out);
    the columns numbered in ``right`` align right."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1))
    for index, header in enumerate(headers):
        table.add_column(header, justify="right" if index in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    # Plain text whatever the cells hold: no colour, markup, emoji codes or wrapping.
    console = Console(width=10_000, color_system=None, highlight=False, markup=False, emoji=False)
    with console.capture() as captured:
        console.print(table)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def _counters_table(response: pb.GetAnalyticsResponse) -> str:
    if not response.counts:
        return "no counters"
    rows = [
        [
            counter.name,
            counter_type_name(counter.type),
            f"{counter.year}-W{counter.week:02d}" if counter.week else "",
            str(counter.count),
            f"{counter.value.sum:.15g}",
            "yes" if counter.goal else "",
        ]
        for counter in response.counts
    ]
    return format_table(["COUNTER", "TYPE", "WEEK", "USERS", "SUM", "GOAL"], rows, right={3, 4})


def _goals_table(response: pb.ListGoalsResponse) -> str:
    if not response.goals:
        return "no goals"
    return format_table(["GOAL"], [[goal] for goal in response.goals])


def _event_predictions_table(response: pb.GetPredictionsResponse) -> str:
    rows = [
        [goal, event, f"{prediction.bayes:.4f}"]
        for goal, answer in sorted(response.goals.items())
        for event, prediction in sorted(answer.events.items(), key=lambda i: (-i[1].bayes, i[0]))
    ]
    if not rows:
        return "no predictions: no goal has been reached after other events"
    return format_table(["GOAL", "EVENT", "P(GOAL|EVENT)"], rows, right={2})


def _naive_bayes_table(response: pb.GetPredictionsResponse) -> str:
    if not response.goals:
        return "no goals"
    rows = [
        [
            goal,
            _optional(answer, "probability", ".4f"),
            _optional(answer, "likelihood", ".4g"),
            _optional(answer, "yes", ".4g"),
            _optional(answer, "no", ".4g"),
            answer.note,
        ]
        for goal, answer in sorted(response.goals.items())
    ]
    headers = ["GOAL", "PROBABILITY", "LIKELIHOOD", "YES", "NO", "NOTE"]
    return format_table(headers, rows, right={1, 2, 3, 4})


def _optional(message: Message, field: str, spec: str) -> str:
    return format(getattr(message, field), spec) if message.HasField(field) else ""


def _nudges_table(response: pb.GetNudgesResponse) -> str:
    if not response.nudges:
        return f"no nudges towards {response.goal} for {response.user_id}"
    rows = [[nudge.event_name, f"{nudge.prediction:.4f}"] for nudge in response.nudges]
    return format_table(["EVENT", "P(GOAL|EVENT)"], rows, right={1})


def flag_history(connection: Connection, name: str, *, as_json: bool = False) -> None:
    """Print a flag's recent changes, newest first: when, which token (by id), what."""
    request = pb.GetFeatureSpecHistoryRequest(name=name)
    _show(_every_page(connection, "GetFeatureSpecHistory", request, "changes"), as_json, _history)


def _history(response: pb.FeatureSpecHistory) -> str:
    if not response.changes:
        return "no recorded changes"
    rows = [
        [
            change.time.ToJsonString() if change.HasField("time") else "unknown",
            change.token_id or "unknown",
            "deleted"
            if not change.HasField("new_spec")
            else "created"
            if not change.HasField("old_spec")
            else "changed",
            _spec_summary(change.new_spec if change.HasField("new_spec") else change.old_spec),
        ]
        for change in response.changes
    ]
    return format_table(["TIME", "TOKEN", "CHANGE", "FLAG (AFTER, OR AS DELETED)"], rows)


def _spec_summary(spec: pb.FeatureSpec) -> str:
    """A flag spec in one line: ``on``/``off``, its rollouts, conditions and variants."""
    parts = ["on" if spec.boolean else "off"]
    if spec.HasField("rollout_percentage"):
        parts.append(f"{spec.rollout_percentage}% by {spec.stickiness or 'default'}")
    if spec.HasField("rollout_start"):
        start, end = spec.rollout_start.ToJsonString(), spec.rollout_end.ToJsonString()
        parts.append(f"rollout {start} to {end}")
    if spec.user:
        parts.append(f"{len(spec.user)} user condition(s)")
    if spec.variants:
        parts.append("variants " + ",".join(f"{v.name}:{v.weight}" for v in spec.variants))
    return "; ".join(parts)


MAX_ORIGINAL_BYTES = 64 * 1024 * 1024  # far past any set of specs that fits a server


def import_original(connection: Connection, source: str, *, replace: bool = False) -> None:
    """Set the feature specs held in the original service's stored state ``source`` (its
    ``features_store`` object from S3 or GCS, or its ConfigMap's ``data`` value): each one
    the server lacks, or every one with ``replace``. Nothing is set if any is unusable."""
    with _open(source) as stream:
        data = stream.read(MAX_ORIGINAL_BYTES + 1)
    if len(data) > MAX_ORIGINAL_BYTES:
        raise CommandError(f"{source}: larger than {MAX_ORIGINAL_BYTES} bytes: not specs")
    try:
        specs, problems = decode_original_specs(data)
    except OriginalSpecsError as error:
        raise CommandError(f"{source}: {error}") from None
    if problems:
        raise CommandError(f"{source}: nothing imported: {'; '.join(problems)}")
    imported = 0
    with _channel(connection) as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        call = {"timeout": connection.timeout, "metadata": connection.metadata()}
        for spec in specs:
            if not replace and _has_spec(stub, spec.name, call):
                print(f"kept {spec.name}: already set here (--replace overwrites it)")
                continue
            stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec_to_proto(spec)), **call)
            print(f"imported {spec.name}")
            imported += 1
    print(f"{imported} of {len(specs)} feature specs imported from {source}")


def _has_spec(stub: pb_grpc.KimballServiceStub, name: str, call: dict[str, Any]) -> bool:
    try:
        stub.GetFeatureSpec(pb.GetFeatureSpecRequest(name=name), **call)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


def flags_list(connection: Connection, *, as_json: bool = False) -> None:
    """Print the feature specs (flags), every page."""
    request = pb.ListFeatureSpecsRequest()
    _show(_every_page(connection, "ListFeatureSpecs", request, "specs"), as_json, _flags_table)


def flags_get(connection: Connection, name: str) -> None:
    """Print the feature spec ``name`` as JSON, the form ``flags set`` takes back."""
    spec = _call(connection, "GetFeatureSpec", pb.GetFeatureSpecRequest(name=name))
    print(json.dumps(plain_json(spec), indent=2))


def flags_set(connection: Connection, source: str) -> None:
    """Set the feature spec held in ``source`` (a path, or ``-`` for stdin): one JSON
    object with the fields ``flags get`` prints (the fields left out take their defaults,
    so the spec set is the whole of what is given)."""
    with _open(source) as stream:
        data = stream.read(MAX_MESSAGE_BYTES + 1)
    if len(data) > MAX_MESSAGE_BYTES:
        raise CommandError(f"{source}: larger than {MAX_MESSAGE_BYTES} bytes: not a spec")
    spec = _parse_json(source, data, pb.FeatureSpec())
    stored = _call(connection, "PutFeatureSpec", pb.PutFeatureSpecRequest(spec=spec))
    print(f"set {stored.name}")


def _parse_json(source: str, data: bytes, message: Message) -> Any:
    """``message`` filled from the JSON object ``data``, or a ``CommandError`` saying why
    it is not one (not UTF-8, not JSON, an unknown field, a value of the wrong type)."""
    try:
        parsed = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise CommandError(f"{source}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise CommandError(
            f"{source}: not JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    if not isinstance(parsed, dict):
        raise CommandError(f"{source}: expected a JSON object")
    try:
        return ParseDict(parsed, message)
    except ParseError as error:  # its message goes on to list the fields: one line of it
        raise CommandError(f"{source}: {str(error).splitlines()[0]}") from None


def flags_evaluate(
    connection: Connection,
    user: str = "{}",
    context: str = "{}",
    *,
    as_json: bool = False,
) -> None:
    """Print every flag's answer for the user object ``user`` (JSON) in ``context``
    (JSON: ``namespace`` and ``feature`` count the evaluation as that user's event)."""
    request = pb.EvaluateFeaturesRequest()
    _parse_json("--user", user.encode(), request.user)
    _parse_json("--context", context.encode(), request.context)
    _show(_call(connection, "EvaluateFeatures", request), as_json, _evaluation_table)


def _flags_table(response: pb.FeatureSpecs) -> str:
    if not response.specs:
        return "no flags"
    rows = [
        [
            spec.name,
            "true" if spec.boolean else "false",
            _rollout(spec),
            str(len(spec.user)),
        ]
        for spec in response.specs
    ]
    return format_table(["FLAG", "BOOLEAN", "ROLLOUT", "USER CONDITIONS"], rows, right={3})


def _rollout(spec: pb.FeatureSpec) -> str:
    if not spec.HasField("rollout_start"):
        return ""
    return f"{spec.rollout_start.ToJsonString()} to {spec.rollout_end.ToJsonString()}"


def _evaluation_table(response: pb.EvaluateFeaturesResponse) -> str:
    if not response.features:
        return "no flags"
    rows = [[name, "true" if on else "false"] for name, on in sorted(response.features.items())]
    return format_table(["FLAG", "VALUE"], rows)


@dataclass(frozen=True)
class TailFilter:
    """Which events ``kimball tail`` follows, and from where (``SubscribeRequest``)."""

    event_names: Sequence[str] = ()
    event_name_prefix: str = ""
    after_sequence: int | None = None  # None: live events only


def tail(connection: Connection, which: TailFilter, *, as_json: bool = False) -> None:
    """Print the events Kimball accepts as they arrive, one line each (or a JSON object
    per line), until Ctrl-C or the server ends the stream. An empty namespace follows
    every namespace. Events missed by falling behind are reported on stderr, with the
    sequence number to resume from."""
    request = pb.SubscribeRequest(
        namespace=connection.namespace,
        event_names=which.event_names,
        event_name_prefix=which.event_name_prefix,
        after_sequence=which.after_sequence,
    )
    last: int | None = None
    dropped = 0
    with _channel(connection) as channel:
        stream = pb_grpc.KimballServiceStub(channel).Subscribe(
            request, timeout=connection.timeout, metadata=connection.metadata()
        )
        try:
            for answer in stream:
                if answer.dropped > dropped:
                    print(
                        f"kimball: missed {answer.dropped - dropped} events by falling behind; "
                        f"--after-sequence {last if last is not None else 0} reads them back",
                        file=sys.stderr,
                        flush=True,
                    )
                    dropped = answer.dropped
                last = answer.sequence
                line = json.dumps(plain_json(answer)) if as_json else _event_line(answer)
                print(line, flush=True)
        except grpc.RpcError as error:
            if last is None or error.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
            raise CommandError(
                f"the stream from {connection.target} ended (UNAVAILABLE); "
                f"resume with --after-sequence {last}"
            ) from None
    raise CommandError(f"the server ended the stream; resume with --after-sequence {last or 0}")


def _event_line(answer: pb.SubscribeResponse) -> str:
    """One event for a person: ``SEQUENCE NAMESPACE EVENT user=ID [value=V] [goal]``."""
    event = answer.event
    user = f"user={event.user_id}" if event.user_id else f"user_hash={answer.user_hash}"
    parts = [str(answer.sequence), event.namespace, event.event_name, user]
    if event.HasField("value"):
        parts.append(f"value={event.value:.15g}")
    if event.ensure_goal:
        parts.append("goal")
    if event.HasField("datetime"):
        parts.append(event.datetime.ToJsonString())
    if answer.replayed:
        parts.append("replayed")
    return " ".join(parts)
