"""``kimball serve --rest-workers N``: REST served by worker processes beside the engine
process, sharing the REST port; what they acknowledge is in the log, the API answers as
without them, and SIGTERM ends the workers and then the engine."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.kimball_process import (
    output_after_listening,
    read_until_listening,
    start,
    stop,
    token_config,
)
from support.polling import until

TOKEN = "rest-workers-token"
EVENTS = [{"namespace": "w", "user_id": f"user-{i}", "event_name": "signup"} for i in range(50)]


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = TOKEN,
    content_type: str = "application/json",
) -> tuple[int, bytes]:
    """One request on a connection of its own: (status, body)."""
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def children(pid: int) -> list[int]:
    """The live processes ``pid`` started."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out.extend(int(child) for child in (task / "children").read_text().split())
    return out


def signups(port: int) -> int:
    status, body = call(port, "GET", "/v0/analytics?namespace=w")
    assert status == 200, body
    counts = {c["name"]: c["count"] for c in json.loads(body)["counts"]}
    return counts.get("signup", 0)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return token_config(tmp_path, TOKEN)


def test_workers_take_events_into_the_log_and_stop_before_the_engine(
    tmp_path: Path, config: Path
) -> None:
    data = str(tmp_path / "data")
    server = start(
        "--grpc-port", "0", "--data-dir", data, "--config", str(config), "--rest-workers", "2"
    )
    try:
        port = read_until_listening(server).rest_port
        workers = workers_of(server.pid, 2)
        # Each on a connection of its own: the kernel spreads them over the workers.
        for start_at in range(0, 50, 10):
            body = json.dumps({"events": EVENTS[start_at : start_at + 10]}).encode()
            assert call(port, "POST", "/v0/analytics", body) == (204, b"")
        stream = b"\n".join(json.dumps({"events": [e]}).encode() for e in EVENTS[:3])
        status, answer = call(
            port, "POST", "/v0/analytics:stream", stream, content_type="application/x-ndjson"
        )
        assert (status, json.loads(answer)) == (200, {"accepted": 3, "messages": 3})
        assert signups(port) == 50  # a forwarded call sees what the batches applied

        bad = json.dumps({"events": [EVENTS[0], {**EVENTS[1], "user_id": ""}]}).encode()
        status, answer = call(port, "POST", "/v0/analytics", bad)
        assert status == 400
        assert json.loads(answer)["error"]["index"] == "1"
        assert call(port, "POST", "/v0/analytics", bad, token=None)[0] == 401
        assert call(port, "POST", "/v0/analytics", bad, token="wrong")[0] == 401
        assert signups(port) == 50  # nothing of the refused batches applied

        # The engine's metrics, through whichever worker takes the scrape; the events the
        # workers handed over counted as ingested through REST.
        status, text = call(port, "GET", "/metrics")
        assert status == 200
        ingested = re.findall(r"^kimball_events_ingested_total\{(.*)\} (\S+)$", text.decode(), re.M)
        assert sum(float(n) for _, n in ingested) == 53, ingested  # the batches and the stream
        assert call(port, "GET", "/metrics", token=None)[0] == 401
        # The workers' REST requests, per route, counted there too (all of them, whichever
        # worker served them: each hands its counts over within a fraction of a second).
        posts = 'method="POST",route="/v0/analytics"'
        assert until_metric(port, "kimball_http_requests_total", posts) == 8
        refused = re.findall(r"^kimball_events_refused_total\{(.*)\} (\S+)$", scrape(port), re.M)
        assert sum(float(n) for _, n in refused) == 2 + 2, refused  # 400 (2 events), two 401s

        # The live event stream, from the engine through a worker: what is already in the
        # log, resumed after a sequence.
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v0/events:stream?namespace=w&after_sequence=0",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=20) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            lines = [stream.readline() for _ in range(3 * 3 + 1)]  # ": stream open", 3 events
        events = [json.loads(line[6:]) for line in lines if line.startswith(b"data: ")]
        assert [(e["namespace"], e["event_name"]) for e in events] == [("w", "signup")] * 3
        assert [line for line in lines if line.startswith(b"id: ")] == [
            b"id: 1\n",
            b"id: 2\n",
            b"id: 3\n",
        ]
    finally:
        assert stop(server) == 0
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}")

    # What the workers acknowledged is in the log and the last snapshot: a server without
    # workers, on the same data, counts it.
    again = start("--grpc-port", "0", "--data-dir", data, "--config", str(config))
    try:
        assert signups(read_until_listening(again).rest_port) == 50
    finally:
        stop(again)


def scrape(port: int) -> str:
    status, text = call(port, "GET", "/metrics")
    assert status == 200
    return text.decode()


def until_metric(port: int, name: str, labels: str) -> float:
    """The sum of ``name``'s samples whose labels hold ``labels``, once it stops changing
    (the workers hand their counts over within a fraction of a second)."""
    last = None
    for _ in range(50):
        samples = re.findall(rf"^{name}(?:\{{(.*)\}})? (\S+)$", scrape(port), re.M)
        total = sum(float(n) for found, n in samples if labels in found)
        if total == last:
            return total
        last = total
        time.sleep(0.2)
    return total


def workers_of(pid: int, expected: int, timeout: float = 20) -> list[int]:
    """The REST worker processes of server ``pid``, once ``expected`` of them run (a worker
    just started has the server's command line until it executes its own;
    ``AssertionError`` after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = [
            child
            for child in children(pid)
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
        ]
        if len(workers) == expected:
            return workers
        assert time.monotonic() < deadline, f"{len(workers)} workers, not {expected}"
        time.sleep(0.05)


async def test_workers_end_when_the_server_process_dies(tmp_path: Path, config: Path) -> None:
    server = start("--grpc-port", "0", "--config", str(config), "--rest-workers", "2")
    try:
        port = read_until_listening(server).rest_port
        workers = workers_of(server.pid, 2)
        server.kill()  # no SIGTERM passed on: the workers learn it from their link
        server.wait()
        await until(
            lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers),
            "the workers of a dead server end",
            timeout=20,
        )
        # Nothing listens any more: the port is free for the next start.
        with pytest.raises(urllib.error.URLError):
            call(port, "GET", "/alive")
    finally:
        stop(server)


async def test_a_worker_that_dies_is_started_again_and_the_other_serves(config: Path) -> None:
    server = start("--grpc-port", "0", "--config", str(config), "--rest-workers", "2")
    try:
        port = read_until_listening(server).rest_port
        dead, alive = workers_of(server.pid, 2)
        os.kill(dead, signal.SIGKILL)
        await until(lambda: not os.path.exists(f"/proc/{dead}"), "the worker is gone", 20)
        body = json.dumps({"events": EVENTS[:5]}).encode()
        for _ in range(4):  # connections of their own: the port answers meanwhile
            assert call(port, "POST", "/v0/analytics", body) == (204, b"")
        (new,) = set(workers_of(server.pid, 2)) - {alive, dead}  # in its place
        assert until_metric(port, "kimball_rest_worker_restarts_total", "") == 1
        os.kill(alive, signal.SIGKILL)  # and the new one serves alone
        await until(lambda: not os.path.exists(f"/proc/{alive}"), "the other is gone", 20)
        assert call(port, "POST", "/v0/analytics", body) == (204, b"")
    finally:
        assert stop(server) == 0
    log = "".join(output_after_listening(server))
    assert f"REST worker {dead} ended (exit code -9); starting another in 0.5 s" in log
    assert f"REST worker {new} started" in log


def test_a_bad_rest_workers_flag_is_refused(config: Path) -> None:
    server = start("--grpc-port", "0", "--config", str(config), "--rest-workers", "many")
    output, _ = server.communicate(timeout=30)
    assert server.returncode != 0
    assert "--rest-workers" in output and "'many'" in output
