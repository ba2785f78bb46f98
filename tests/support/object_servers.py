"""Real object storage servers on loopback for tests: moto (S3) and gcp-storage-emulator (GCS).

Each runs as a subprocess on a free port, answers real HTTP, and can be stopped and started
again on the same port ("the backend went down, then came back"). Neither keeps anything
across a restart: buckets must be made again.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import IO, Any, Self

import boto3
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from support.ports import free_port

# Credentials and region the S3 tests use; moto accepts any.
S3_ACCESS_KEY_ID = "testing"
S3_SECRET_ACCESS_KEY = "testing"
S3_REGION = "us-east-1"


class ObjectServer:
    """A server process on ``127.0.0.1:port``: ``start``, ``stop``, ``restart``, or ``with``."""

    def __init__(self, name: str, command: Callable[[int], list[str]]) -> None:
        self.name = name
        self.port = free_port()
        self._command = command
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, deadline: float = 30) -> None:
        """Start the server and return once it answers HTTP."""
        assert self._process is None, f"{self.name} is already running"
        # A file, not a pipe: a chatty server must never block on a full pipe.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        self._process = subprocess.Popen(
            self._command(self.port), stdout=self._log, stderr=subprocess.STDOUT
        )
        end = time.monotonic() + deadline
        while not self._answers():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._process.returncode}: {self.log()}"
                )
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"{self.name} did not answer within {deadline} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server; once this returns, its port refuses connections."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Start the stopped server again on the same port (empty: it kept nothing)."""
        self.stop()
        self.start()

    def log(self) -> str:
        """What the server printed since it last started."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # an HTTP error is an answer: the server is up
        except OSError:
            return False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def moto_server() -> ObjectServer:
    """moto in server mode: an S3-compatible HTTP server (not started yet)."""
    return ObjectServer(
        "moto server",
        lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
    )


def gcs_emulator() -> ObjectServer:
    """gcp-storage-emulator: the GCS JSON API in memory (not started yet)."""
    return ObjectServer(
        "gcp-storage-emulator",
        lambda port: [
            *(sys.executable, "-m", "gcp_storage_emulator", "start"),
            *("--host=127.0.0.1", f"--port={port}", "--in-memory", "--quiet"),
        ],
    )


def s3_client(server: ObjectServer) -> Any:
    """A boto3 S3 client of ``server`` (building one takes boto3 ~0.3 s: share it)."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.url,
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        region_name=S3_REGION,
    )


def gcs_client(server: ObjectServer) -> Any:
    """A google-cloud-storage client of ``server``, anonymous as the emulator wants."""
    return gcs.Client(
        project="kimball",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": server.url},
    )


def new_bucket_name() -> str:
    """A bucket name no other test uses."""
    return f"kimball-{uuid.uuid4().hex[:12]}"
