"""A cluster on this machine, for trying cluster mode: 3 NATS JetStream servers and 3 Kimball
replicas on loopback, everything under one directory (default ``.cluster``): each process's
log, its data, and ``pids``.

    python tests/support/dev_cluster.py up [DIRECTORY]     # or: make cluster-up
    python tests/support/dev_cluster.py down [DIRECTORY]   # or: make cluster-down

NATS listens on 127.0.0.1:4222-4224; replica ``replica-i`` on gRPC 50051+i and REST 8080+i.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from support.nats_cluster import NatsCluster

NATS_PORT = 4222
GRPC_PORT = 50051
REST_PORT = 8080
REPLICAS = 3
READY_SECONDS = 60.0
STOP_SECONDS = 15.0


def up(directory: Path) -> None:
    if (directory / "pids").exists():
        sys.exit(f"{directory}/pids exists: a cluster runs there (`down` stops it)")
    directory.mkdir(parents=True, exist_ok=True)
    tokens = directory / "api-tokens"
    if not tokens.exists():  # one token every replica accepts
        tokens.write_text(secrets.token_urlsafe(32) + "\n")
        tokens.chmod(0o600)
    nats = NatsCluster.create(directory, base_port=NATS_PORT)
    nats.start()
    pids = [node.process.pid for node in nats.nodes if node.process is not None]
    urls = ",".join(nats.urls)
    kimball = Path(sys.executable).parent / "kimball"
    for index in range(REPLICAS):
        name = f"replica-{index}"
        command = [
            str(kimball), "serve",
            "--host", "127.0.0.1",
            "--grpc-port", str(GRPC_PORT + index),
            # Listening on loopback only: the others reach it there, not at its host name.
            "--advertise-address", f"127.0.0.1:{GRPC_PORT + index}",
            "--api-port", str(REST_PORT + index),
            "--data-dir", str(directory / name),
            # One object store for all: a partition's next owner finds its snapshots.
            "--storage", f"file://{(directory / 'objects').resolve()}",
            "--nats-url", urls,
            "--replica-id", name,
            "--api-tokens-file", str(tokens),
        ]  # fmt: skip
        with open(directory / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        pids.append(process.pid)
    (directory / "pids").write_text("".join(f"{pid}\n" for pid in pids))
    for index in range(REPLICAS):
        _wait_ready(REST_PORT + index, directory)
    token = tokens.read_text().split()[0]
    for index in range(REPLICAS):
        _wait_answering(REST_PORT + index, token, directory)
    print(f"NATS: {urls}")
    for index in range(REPLICAS):
        print(
            f"replica-{index}: gRPC 127.0.0.1:{GRPC_PORT + index}, "
            f"REST http://127.0.0.1:{REST_PORT + index}"
        )
    print(f"API token (Authorization: Bearer ...) in {tokens}")
    print(f"logs and data under {directory}; stop with: make cluster-down")


def _wait_ready(port: int, directory: Path) -> None:
    _wait_for_200(
        urllib.request.Request(f"http://127.0.0.1:{port}/ready"),
        f"the replica on REST port {port} is not ready; see the logs in {directory}",
    )


def _wait_answering(port: int, token: str, directory: Path) -> None:
    """Until the replica answers a query of every partition: just after a start the
    partitions are still being claimed, and a query then says which have no owner."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v0/namespaces", headers={"Authorization": f"Bearer {token}"}
    )
    _wait_for_200(
        request, f"the replica on REST port {port} answers no query; see the logs in {directory}"
    )


def _wait_for_200(request: urllib.request.Request, failure: str) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(failure)
        time.sleep(0.2)


def down(directory: Path) -> None:
    pids_file = directory / "pids"
    if not pids_file.exists():
        sys.exit(f"no {pids_file}: no cluster started there")
    pids = [int(line) for line in pids_file.read_text().split()]
    for pid in reversed(pids):  # the replicas first, then NATS
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    pids_file.unlink()
    print(f"stopped {len(pids)} processes; their logs and data stay under {directory}")


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main() -> None:
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in ("up", "down"):
        sys.exit(__doc__)
    directory = Path(sys.argv[2] if len(sys.argv) == 3 else ".cluster")
    up(directory) if sys.argv[1] == "up" else down(directory)


if __name__ == "__main__":
    main()
