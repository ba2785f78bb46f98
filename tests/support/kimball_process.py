"""Kimball as a real process in tests: start it, learn its ports from its log line."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

KIMBALL = [sys.executable, "-m", "kimball_grpc.cli"]


@dataclass(frozen=True)
class Listening:
    """What a started process said: its ports (0 if it has none) and its lines so far."""

    grpc_port: int
    rest_port: int
    lines: list[str]


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``kimball serve`` on loopback, free REST port unless ``args`` say otherwise."""
    return start_command("serve", "--host", "127.0.0.1", "--api-port", "0", *args, env=env)


def start_command(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``kimball ARGS`` with its log on a pipe (read it with ``read_until_listening``).

    ``serve`` without ``--data-dir`` gets a fresh temporary one (removed at exit), so no
    test writes into the working directory or sees another's state.
    """
    if args[:1] == ("serve",) and "--data-dir" not in args:
        data_dir = tempfile.mkdtemp(prefix="kimball-test-")
        atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
        args = (*args, "--data-dir", data_dir)
    return subprocess.Popen(
        [*KIMBALL, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


# The thread reading each process's output after ``read_until_listening``: a process
# writes a line per request (the access log) and would stall on a full pipe.
_drains: weakref.WeakKeyDictionary[subprocess.Popen[str], tuple[threading.Thread, list[str]]]
_drains = weakref.WeakKeyDictionary()


def read_until_listening(
    process: subprocess.Popen[str], deadline: float = 30, ready: bool = True
) -> Listening:
    """Read the log up to the line saying where the process listens, and for a server
    (unless ``ready`` is false) on to the line saying its state is restored; then a thread
    goes on reading it (``output_after_listening``), so the pipe never fills."""
    assert process.stdout is not None
    end = time.monotonic() + deadline
    lines = []
    listening = None
    for line in process.stdout:
        lines.append(line)
        if " listening: " in line:
            grpc_port = re.search(r"gRPC on \S+:(\d+)", line)
            rest_port = re.search(r"REST on \S+:(\d+)", line)
            listening = Listening(
                int(grpc_port.group(1)) if grpc_port else 0,
                int(rest_port.group(1)) if rest_port else 0,
                lines,
            )
            if not ready or "gateway listening" in line:
                return _drained(process, listening)
        if listening is not None and "Kimball ready" in line:
            return _drained(process, listening)
        assert time.monotonic() < end, "no listening or ready line in time"
    raise AssertionError(f"exited with {process.wait()} before ready: {''.join(lines)}")


def _drained(process: subprocess.Popen[str], listening: Listening) -> Listening:
    assert process.stdout is not None
    stdout, rest = process.stdout, []
    thread = threading.Thread(target=lambda: rest.extend(stdout), daemon=True)
    thread.start()
    _drains[process] = (thread, rest)
    return listening


def wait_for_output(process: subprocess.Popen[str], fragment: str, timeout: float = 20) -> str:
    """The first line holding ``fragment`` that the process wrote after
    ``read_until_listening`` returned, as its output comes (``AssertionError`` after
    ``timeout`` seconds, with what came)."""
    _, rest = _drains[process]
    deadline = time.monotonic() + timeout
    while True:
        for line in list(rest):
            if fragment in line:
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no line with {fragment!r} in time: {''.join(rest)}")
        time.sleep(0.05)


def output_after_listening(process: subprocess.Popen[str], timeout: float = 30) -> list[str]:
    """The lines a process wrote after ``read_until_listening`` returned, once it has
    exited (its pipe ended)."""
    thread, rest = _drains.pop(process)
    thread.join(timeout)
    assert not thread.is_alive(), "the process's output did not end"
    return rest


def wait_for_port(process: subprocess.Popen[str], deadline: float = 30) -> int:
    """The gRPC port of a started ``kimball serve``."""
    return read_until_listening(process, deadline).grpc_port


def token_config(directory: Path, token: str) -> Path:
    """An app.config accepting ``token``."""
    path = directory / "app.config"
    path.write_text(f'[{{features, [{{api_auth_tokens, [<<"{token}">>]}}]}}].\n')
    return path


def stop(process: subprocess.Popen[str] | None) -> int | None:
    """SIGTERM, then the exit code (killed after 20 s)."""
    if process is None:
        return None
    process.terminate()
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
