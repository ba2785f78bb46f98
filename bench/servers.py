"""The server subprocesses the benchmark scripts measure: ``kimball serve`` with authentication
on, as deployed, or a no-op server of the script's own; their ports, readiness, ``/metrics``
and the CPU time they spend (read from /proc)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kimball_grpc.core.limits import MAX_MESSAGE_BYTES

SERVICE = "/kimball.v1.KimballService"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
# Kimball runs as deployed, authentication on; the no-op servers ignore the header.
BENCH_TOKEN = "bench-token"
AUTH = (("authorization", f"Bearer {BENCH_TOKEN}"),)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Environment the servers must not inherit from the shell that runs the benchmark.
STRIPPED_ENV = ("KIMBALL_CONFIG", "FEATURES_MODE", "ANALYTICS_HOST", "ANALYTICS_TOKEN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin_to(cpu: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins a child process to ``cpu`` (None: no pinning)."""
    return (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (all threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and every live process below it (a server's worker
    processes), from /proc: each read while it runs, so nothing is counted twice."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            total += process_cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            continue
    return total


def cpu_busy_seconds() -> dict[str, float]:
    """User + nice + system time of each CPU ("cpu0", ...) and of all ("all"), from
    /proc/stat: whatever ran there, other tenants' processes and kernel threads included."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            fields = line.split()
            name = "all" if fields[0] == "cpu" else fields[0]
            out[name] = (int(fields[1]) + int(fields[2]) + int(fields[3])) / CLOCK_TICKS
    return out


def finish(process: subprocess.Popen, timeout: float) -> None:
    """Wait for a process told to end; kill it after ``timeout`` seconds."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def scrape_metrics(http_port: int, prefix: str) -> dict[str, float]:
    """Samples of a server's ``/metrics`` (bearer token) whose names start with ``prefix``,
    by sample name with its labels."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/metrics",
        headers={"Authorization": f"Bearer {BENCH_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        text = answer.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@dataclass
class ServerProcess:
    """A server subprocess pinned to ``cpu``: ``port`` for gRPC, ``http_port`` for REST."""

    name: str
    argv: list[str]
    cpu: int | None
    cwd: str
    env: dict[str, str] = field(default_factory=dict)  # on top of ours, less STRIPPED_ENV
    log: str | None = None  # a file for its output (None: this script's own)
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log: Path | None = None  # its output, appended (None: this process's own)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
        env["LOG_LEVEL"] = "WARNING"
        env.update(self.env)
        with contextlib.ExitStack() as files:
            output = files.enter_context(open(self.log, "ab")) if self.log else None
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=env,
                preexec_fn=pin_to(self.cpu),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
            )

    def wait_for(self, check: Callable[[], object], timeout: float, what: str) -> None:
        """Poll ``check`` until it returns true; raise if the process exits first or
        ``timeout`` seconds pass (connection errors count as not yet)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            with contextlib.suppress(OSError, grpc.RpcError, grpc.FutureTimeoutError):
                if check():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {what} within {timeout:g} s")
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the gRPC port takes connections."""
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            ready = grpc.channel_ready_future(channel)
            self.wait_for(lambda: ready.result(timeout=0.5) or True, timeout, "no gRPC port")

    def wait_serving(self, timeout: float = 30.0) -> None:
        """Until the health service says SERVING (the state restored, calls taken)."""
        serving = health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest()
            self.wait_for(
                lambda: health.Check(check, timeout=1).status == serving, timeout, "not serving"
            )

    def wait_http(self, path: str, timeout: float = 20.0) -> None:
        """Until ``GET path`` on the REST port answers 200."""

        def ok() -> bool:
            url = f"http://127.0.0.1:{self.http_port}{path}"
            with urllib.request.urlopen(url, timeout=1) as answer:
                return answer.status == 200

        self.wait_for(ok, timeout, f"no 200 from {path}")

    def metrics(self, prefix: str) -> dict[str, float]:
        return scrape_metrics(self.http_port, prefix)

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole server process (all threads)."""
        assert self.process is not None
        return process_cpu_seconds(self.process.pid)

    def tree_cpu_seconds(self) -> float:
        """The same, with every process it started (``--rest-workers``)."""
        assert self.process is not None
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            finish(self.process, timeout=15)


def kimball_argv(
    server: ServerProcess, data_dir: str, *flags: str, features: str = ""
) -> list[str]:
    """``kimball serve`` on the server's ports, its state in ``data_dir``, with authentication
    on: the bench token (and ``features``, more entries of that section) in an app.config
    next to ``data_dir``; then ``flags``."""
    script = Path(sys.executable).with_name("kimball")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "kimball_grpc.cli"]
    config = Path(data_dir).with_name("app.config")
    entries = ", ".join(filter(None, [f'{{api_auth_tokens, [<<"{BENCH_TOKEN}">>]}}', features]))
    config.write_text(f"[{{features, [{entries}]}}].\n")
    return [
        *head,
        "serve",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(server.port),
        "--api-port",
        str(server.http_port),
        "--data-dir",
        data_dir,
        "--config",
        str(config),
        *flags,
    ]
