"""No log line, at any level, holds a user id or an event: ``kimball serve`` runs with every
logger at DEBUG (and gRPC's own at debug), every REST route and every gRPC method is
called with known ids, with a right token and failing in every way a client can make it
fail, and the whole log, as the process wrote it, is searched for them. Once with text
lines and once with JSON lines (``--log-format json``), the access log on (its default):
it has a line per request and per call, and they are as private as the rest."""

from __future__ import annotations

import base64
import http.client
import json
import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from support.kimball_process import (
    output_after_listening,
    read_until_listening,
    start,
    stop,
    token_config,
)
from support.routes import V0_PATHS

from kimball_grpc.generated import features_proto_pb2 as ipb
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import relay_pb2 as rpb

# The tests of one format read one server's log: they share a worker, so it runs once.
FORMATS = [
    pytest.param(log_format, marks=pytest.mark.xdist_group(f"log_privacy_{log_format}"))
    for log_format in ("text", "json")
]
# What gRPC's C core writes itself (GRPC_VERBOSITY), in its own format, in either run.
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")
GRPC_CORE_LINE = re.compile(r"[DIWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")

TOKEN = "log-privacy-token"
# Every id and name sent starts with this: found in the log, it is a leak.
MARK = "pv" + secrets.token_hex(6)
SERVICES = (
    pb.DESCRIPTOR.services_by_name["KimballService"],
    ipb.DESCRIPTOR.services_by_name["KimballIntegration"],
    rpb.DESCRIPTOR.services_by_name["KimballRelay"],
)


@pytest.fixture(scope="module", params=FORMATS)
def log_of_a_busy_server(tmp_path_factory, request) -> str:
    """The whole output of a ``kimball serve`` that was sent every call below, in a format."""
    data_dir = tmp_path_factory.mktemp("privacy")
    env = {
        "LOG_LEVEL": "DEBUG",
        "GRPC_VERBOSITY": "debug",
        "KIMBALL_HTTP_HEADER_TIMEOUT": "0.5",
        "KIMBALL_HTTP_BODY_TIMEOUT": "0.5",
    }
    config = token_config(data_dir, TOKEN)
    process = start(
        "--grpc-port",
        "0",
        "--data-dir",
        str(data_dir),
        "--config",
        str(config),
        "--log-format",
        request.param,
        env=env,
    )
    try:
        listening = read_until_listening(process)
        call_every_grpc_method(listening.grpc_port)
        call_every_rest_route(listening.rest_port)
    finally:
        stop(process)
    return "".join(listening.lines + output_after_listening(process))


@pytest.fixture
def log_format(request) -> str:
    """The format of the log the test reads: text or json."""
    return request.node.callspec.params["log_of_a_busy_server"]


def test_no_log_line_holds_a_user_id_or_an_event(log_of_a_busy_server):
    log = log_of_a_busy_server
    assert re.search(r' DEBUG |"level": "DEBUG"', log)  # every level was written
    assert "refused a grpc call" in log  # failures were too (lines rate-limited)
    leaks = [line for line in log.splitlines() if MARK in line]
    assert leaks == []


def test_nothing_a_client_sent_logged_a_traceback(log_of_a_busy_server):
    assert "Traceback" not in log_of_a_busy_server


def access_lines(log: str) -> list[dict]:
    """The access log's lines: JSON objects as written, or text lines read into fields."""
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry["logger"] == "kimball.access":
                out.append(entry)
        elif " INFO kimball.access: " in line:
            message = line.split(" INFO kimball.access: ", 1)[1]
            api = "grpc" if message.startswith("gRPC ") else "rest"
            request_id = message.rsplit("request_id=", 1)[1]
            out.append({"api": api, "message": message, "request_id": request_id})
    return out


def test_every_request_and_call_has_an_access_line(log_of_a_busy_server):
    lines = access_lines(log_of_a_busy_server)
    rest = [line for line in lines if line["api"] == "rest"]
    grpc_calls = [line for line in lines if line["api"] == "grpc"]
    routes = {line["message"].split()[1] for line in rest}
    assert set(V0_PATHS) <= routes  # declared, not as sent
    assert {"/v0/featureSpecs/{name}", "other", "-"} <= routes  # unknown, unparsable
    methods = {line["message"].split()[1] for line in grpc_calls}
    every = {f"/{service.full_name}/{m.name}" for service in SERVICES for m in service.methods}
    assert every <= methods
    assert all(line["request_id"] for line in lines)


def test_every_line_is_in_the_format_chosen(log_of_a_busy_server, log_format):
    """Text: time, level, logger, message; JSON: an object with those fields (and the
    access lines' own). gRPC's C core writes its own lines, in its own format."""
    log = log_of_a_busy_server
    json_run = log_format == "json"
    for line in log.splitlines():
        if GRPC_CORE_LINE.match(line):
            continue
        if json_run:
            entry = json.loads(line)
            assert {"time", "level", "logger", "message"} <= entry.keys(), line
        else:
            assert TEXT_LINE.match(line), line
    if not json_run:
        return
    access = access_lines(log)
    assert {"method", "route", "status", "duration_ms", "bytes_in", "bytes_out"} <= next(
        line for line in access if line["api"] == "rest"
    ).keys()
    assert {"grpc_method", "grpc_code", "duration_ms", "bytes_in", "bytes_out"} <= next(
        line for line in access if line["api"] == "grpc"
    ).keys()


# -- gRPC ------------------------------------------------------------------------------


def filled(descriptor: Descriptor, prefix: str = "") -> dict:
    """JSON for a message with every string field holding ``MARK`` and its own name (user
    ids, names, namespaces), every message field filled the same way, once."""
    out: dict = {}
    for field in descriptor.fields:
        where = f"{prefix}{field.name}"
        nested = field.message_type
        if nested is not None and nested.full_name == "google.protobuf.Struct":
            value: object = {"user_id": f"{MARK}-{where}", "feature": f"{MARK}-feature"}
        elif nested is not None and nested.full_name == "google.protobuf.Value":
            value = f"{MARK}-{where}"
        elif nested is not None and not nested.full_name.startswith("google.protobuf."):
            value = filled(nested, f"{where}.")
        elif field.type == FieldDescriptor.TYPE_STRING:
            value = f"{MARK}-{where}"
        elif field.type == FieldDescriptor.TYPE_BYTES:
            value = base64.b64encode(f"{MARK}-{where}".encode()).decode()
        else:
            continue
        out[field.name] = [value] if field.is_repeated else value
    return out


def request_bytes(descriptor: Descriptor) -> bytes:
    from google.protobuf import json_format
    from google.protobuf.message_factory import GetMessageClass

    message: Message = GetMessageClass(descriptor)()
    json_format.ParseDict(filled(descriptor), message)
    return message.SerializeToString()


def call(channel: grpc.Channel, path: str, method, payload: bytes, metadata) -> None:
    """One call of any shape with raw bytes; every outcome is fine, only the log matters."""
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(path)(iter([payload]), metadata=metadata, timeout=1):
                pass
        elif method.client_streaming:
            channel.stream_unary(path)(iter([payload, payload]), metadata=metadata, timeout=5)
        elif method.server_streaming:
            for _ in channel.unary_stream(path)(payload, metadata=metadata, timeout=1):
                pass
        else:
            channel.unary_unary(path)(payload, metadata=metadata, timeout=5)
    except grpc.RpcError:
        pass


def call_every_grpc_method(port: int) -> None:
    right = (("authorization", f"Bearer {TOKEN}"),)
    failing_metadata = [
        (),
        (("authorization", f"Bearer {MARK}-wrong-token"),),
        (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")),
        (("authorization", f"Bearer {TOKEN}"), ("x-user", f"{MARK}-in-metadata")),
        # A request id that is no sane token is replaced, never logged.
        (("authorization", f"Bearer {TOKEN}"), ("x-request-id", f"{MARK} not an id")),
    ]
    bad_payloads = [
        b"\xff\xff" + MARK.encode(),  # malformed protobuf
        b"\x0a\x05" + MARK.encode(),  # a length that does not match
        request_bytes(pb.TrackEventsRequest.DESCRIPTOR) * 2 + b"\x12\x01" + MARK.encode(),
        b"\x0a" + b"\xfe\xff\xff\xff\x0f" + MARK.encode() * 1000,  # claims 4 GiB
    ]
    names = pb.TrackEventRequest(
        event=pb.Event(event_name=f"{MARK}\u200bname", user_id=f"{MARK}-bad-name")
    ).SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for service in SERVICES:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                good = request_bytes(method.input_type)
                call(channel, path, method, good, right)
                for metadata in failing_metadata:
                    call(channel, path, method, good, metadata)
                for payload in (*bad_payloads, names):
                    call(channel, path, method, payload, right)
        oversized = pb.TrackEventsRequest(
            events=[pb.Event(event_name="e", user_id=f"{MARK}-{i}") for i in range(300_000)]
        ).SerializeToString()
        call(
            channel,
            "/kimball.v1.KimballService/TrackEvents",
            SERVICES[0].methods[1],
            oversized,
            right,
        )
        health = "/grpc.health.v1.Health/"
        check = health_pb2.HealthCheckRequest(service=f"{MARK}-service").SerializeToString()
        for name in ("Check", "List"):
            for payload in (check, b"\xff" + MARK.encode()):
                with suppress(grpc.RpcError):
                    channel.unary_unary(health + name)(payload, timeout=5)
        try:
            for _ in channel.unary_stream(health + "Watch")(check, timeout=0.5):
                pass
        except grpc.RpcError:
            pass
        reflect = reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{MARK}.Symbol")
        for metadata in (right, ()):
            try:
                stream = channel.stream_stream(
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
                )
                for _ in stream(
                    iter([reflect.SerializeToString(), b"\xff" + MARK.encode()]),
                    metadata=metadata,
                    timeout=2,
                ):
                    pass
            except grpc.RpcError:
                pass


# -- REST ------------------------------------------------------------------------------


@contextmanager
def raw(port: int) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        yield sock


def exchange(port: int, data: bytes, trickle: bytes = b"") -> bytes:
    """Send ``data``, then ``trickle`` a byte every 50 ms; the answer."""
    with raw(port) as sock:
        try:
            sock.sendall(data)
            for byte in trickle:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass  # closed on us: what the server said is read below
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
        return b"".join(chunks)


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        if response.getheader("Content-Type") == "text/event-stream":
            response.readline()  # the stream's opening line: it would go on until closed
        else:
            response.read()
        return response.status
    finally:
        connection.close()


def b64(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def call_every_rest_route(port: int) -> None:
    user = f"{MARK}-rest-user"
    event = {"event_name": f"{MARK}-rest-event", "user_id": user, "namespace": f"{MARK}-ns"}
    bodies = {
        "/v0/analytics": json.dumps([event, {**event, "user_id": f"{user}-2"}]),
        "/v0/analytics:stream": json.dumps(event) + "\n" + json.dumps([event]) + "\n",
        "/v0/goals": json.dumps({"goal_name": f"{MARK}-goal", "namespace": f"{MARK}-ns"}),
        "/v0/featureSpecs": json.dumps(
            {"name": f"{MARK}-flag", "boolean": True, "user": [["user_id", "=", user]]}
        ),
    }
    queries = {
        "/v0/analytics": f"?namespace={MARK}-ns",
        "/v0/goals": f"?namespace={MARK}-ns",
        "/v0/predictions": f"?namespace={MARK}-ns&user_id={user}",
        "/v0/nudges": f"?goal={MARK}-goal&user_id={user}",
        "/v0/events:stream": f"?namespace={MARK}-ns&after_sequence=0",
        "/v0/features": "?user_obj="
        + b64({"user_id": user})
        + "&context_obj="
        + b64({"feature": f"{MARK}-flag"}),
    }
    right = {"Authorization": f"Bearer {TOKEN}"}
    for template, verbs in V0_PATHS.items():
        path = template.replace("{name}", f"{MARK}-flag")
        for verb in verbs:
            body = bodies.get(path, "").encode() if verb == "POST" else None
            kind = "application/x-ndjson" if path.endswith(":stream") else "application/json"
            target = path + (queries.get(path, "") if verb in ("GET", "DELETE") else "")
            for headers in (
                right,
                {},
                {"Authorization": f"Bearer {MARK}-wrong-token"},
                {"Authorization": f"Basic {MARK}"},
                {**right, "X-Request-Id": f"{MARK}/{'x' * 200}"},
            ):
                request(port, verb, target, body, {**headers, "Content-Type": kind})
            unknown = ("&" if "?" in target else "?") + f"{MARK}-unknown=1"
            request(port, verb, target + unknown, body, {**right, "Content-Type": kind})
            if body is not None:
                for broken in (
                    body[: len(body) // 2],  # not JSON
                    body.replace(b'"' + user.encode() + b'"', b"12"),  # a wrong type
                    body.replace(user.encode(), f"{MARK}\u202eup".encode()),  # a bad name
                    b'{"user_id": "' + user.encode() + b'", "value": ' + b"9" * 5000 + b"}",
                    b"[" * 5000 + user.encode(),  # nested too deep
                ):
                    request(port, verb, path, broken, {**right, "Content-Type": kind})
    twice = f"GET /v0/predictions?user_id={user} HTTP/1.1\r\nHost: k\r\n"
    twice += f"Authorization: Bearer {TOKEN}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    exchange(port, twice.encode())
    too_big = json.dumps([event] * 60_000).encode()  # over 4 MiB
    request(port, "POST", "/v0/analytics", too_big, {**right, "Content-Type": "application/json"})
    long_line = f"GET /v0/predictions?user_id={user}{'x' * 9000} HTTP/1.1\r\nHost: k\r\n\r\n"
    exchange(port, long_line.encode())
    long_header = f"GET /alive HTTP/1.1\r\nHost: k\r\nX-User: {user}{'x' * 9000}\r\n\r\n"
    exchange(port, long_header.encode())
    exchange(port, f"{user} /v0/analytics HTTP/1.1\r\n\r\n".encode())  # not a method
    exchange(port, f"GET /v0/{user} HTTP/1.1\r\nHost: k\r\n\r\n".encode())  # no such route
    exchange(port, b"", f"GET /alive?user_id={user} HTTP/1.1\r\nHost: k\r\n".encode())
    slow = json.dumps(event).encode()
    head = f"POST /v0/analytics HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {TOKEN}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(slow)}\r\n\r\n"
    exchange(port, head.encode(), slow)  # headers in time, the body not
