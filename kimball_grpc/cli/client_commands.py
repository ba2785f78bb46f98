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
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

import grpc
from google.protobuf.json_format import MessageToJson
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
    """Stream the events of ``source`` (a path, or ``-`` for stdin) to Kimball in batches.

    Stops at the first bad line. The events before it are loaded (the server
    applies each message as it arrives) and the error says how many.
    """
    progress = sys.stderr if sys.stderr.isatty() else None
    with _open(source) as stream:
        events = _events(_decoded(stream), connection.namespace, options)
        upload = _Upload(events, options.batch, progress)
        try:
            with _channel(connection) as channel:
                response = pb_grpc.KimballServiceStub(channel).StreamEvents(
                    iter(upload), timeout=connection.timeout, metadata=connection.metadata()
                )
        finally:
            if progress and upload.sent:
                progress.write("\n")
    if upload.bad_line:
        raise CommandError(
            f"{upload.bad_line}; stopped there, after loading {_events_count(response.accepted)}"
        )
    print(f"loaded {_events_count(response.accepted)}")


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

    def __init__(self, events: Iterator[pb.Event], batch: int, progress: TextIO | None) -> None:
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
        if self._progress:
            self._progress.write(f"\rsent {self.sent:,} events")
            self._progress.flush()
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
    print(MessageToJson(response, preserving_proto_field_name=True) if as_json else table(response))


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """Rows under headers in aligned columns; the columns numbered in ``right`` align right."""
    widths = [max(map(len, column)) for column in zip(headers, *rows, strict=True)]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (headers, *rows)
    )


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
    return format_table(["TIME", "TOKEN", "CHANGE", "SPEC (AFTER, OR AS DELETED)"], rows)


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
