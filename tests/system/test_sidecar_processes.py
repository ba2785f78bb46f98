"""Sidecar mode as real processes, killed with SIGKILL while events come in.

An api server and a sidecar run as ``kimball serve`` processes on fixed loopback
ports; two gRPC senders and one REST sender send batches to the sidecar. Each round
kills something while they send:

* ``api``: the api server is killed; the senders go on (the sidecar acknowledges into
  its spool) for a while, then the api server restarts on its data directory;
* ``sidecar``: the sidecar is killed (calls in flight get no answer) and restarts on
  its data directory;
* ``both``: the api server is killed, the senders go on, then the sidecar is killed
  too; the sidecar restarts, then the api server.

A batch without an answer may or may not be in the spool: the sender sends it again
later, as a client would. At the end every batch has been acknowledged, and once the
sidecar has delivered its spool the api server's counts must be exact: every user
counted once in each counter of its events, and each value summed once. Every user
is new, and the counters' filters grow to stay at p = 1e-9, so no slack is needed.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from support.kimball_process import output_after_listening, read_until_listening, start_command
from support.polling import until
from support.ports import free_port

from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

# Under pytest-xdist the kill -9 tests run one after the other on one worker: each drives
# a server and its senders flat out, and together they would share the cores and make
# each other's kill moments and delivery times less predictable.
pytestmark = pytest.mark.xdist_group("sigkill")

SEED = int(os.environ.get("KIMBALL_SIDECAR_SEED", "20261128"))
TOKEN = "sidecar-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
NAMESPACE = "relayed"
NAMES = ("view", "cart", "paid")
VALUED = "cart"
BATCH = 25
ROUNDS = ("api", "sidecar", "both", "api", "sidecar")
RUN_SECONDS = (0.3, 0.8)  # sending before a kill
DOWN_SECONDS = 0.5  # sending into the sidecar while the api server is down
CALL_TIMEOUT = 10.0
DELIVERY_SECONDS = 60.0
CONFIG = f"""[{{features, [
    {{api_auth_tokens, [<<"{TOKEN}">>]}},
    {{counters, #{{init => [
        #{{pattern => <<"">>, type => bloom_scalable, size => 65536,
          error_probability => 1.0e-9}}
    ]}}}}
]}}].
"""


@dataclass
class Batch:
    events: list[tuple[str, str, int | None]]  # (event name, user, value)
    acked: bool = False


class Processes:
    """The api server and the sidecar, started and killed by the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "app.config"
        self.config.write_text(CONFIG)
        self.api_grpc = free_port()
        self.sidecar_grpc = free_port()
        self.sidecar_rest = free_port()
        self.api: subprocess.Popen[str] | None = None
        self.sidecar: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def start_api(self) -> None:
        self.api = self._start("api", ["--grpc-port", str(self.api_grpc), "--api-port", "0"], {})

    def start_sidecar(self) -> None:
        env = {
            "FEATURES_MODE": "sidecar",
            "ANALYTICS_HOST": f"127.0.0.1:{self.api_grpc}",
            "LOG_LEVEL": "INFO",
        }
        ports = ["--grpc-port", str(self.sidecar_grpc), "--api-port", str(self.sidecar_rest)]
        self.sidecar = self._start("sidecar", ports, env)

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        process = start_command(
            "serve",
            "--host",
            "127.0.0.1",
            "--data-dir",
            str(self.root / name),
            "--config",
            str(self.config),
            *args,
            env=env,
        )
        lines = read_until_listening(process).lines
        self.log.append(f"--- {name} started:\n" + "".join(lines[-3:]))
        return process

    def kill(self, name: str) -> None:
        process = self.api if name == "api" else self.sidecar
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
        self._drain_output(name, process)
        if name == "api":
            self.api = None
        else:
            self.sidecar = None

    def _drain_output(self, name: str, process: subprocess.Popen[str]) -> None:
        last = "".join(output_after_listening(process))[-2000:]
        self.log.append(f"--- {name} killed, its last lines:\n" + last)

    def spool_pending(self) -> float | None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.sidecar_rest}/metrics",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read().decode()
        found = re.search(r"^kimball_relay_spool_events (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    def stop_all(self) -> None:
        for process in (self.sidecar, self.api):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()


class Senders:
    """Clients of the sidecar: each sends batches of new users until told to pause."""

    def __init__(self, grpc_port: int, rest_port: int) -> None:
        self.grpc_port = grpc_port
        self.rest_port = rest_port
        self.batches: list[Batch] = []
        self.retry: list[Batch] = []
        self.up = asyncio.Event()  # the sidecar is running: send
        self.kills = 0  # sidecar kills so far: a call failing across one is expected
        self.stopping = False
        self.unexpected: list[str] = []
        self.rng = random.Random(SEED)

    def next_batch(self, sender: int) -> Batch:
        if self.retry:
            return self.retry.pop(0)
        serial = len(self.batches)
        events = []
        for i in range(BATCH):
            name = NAMES[self.rng.randrange(len(NAMES))]
            value = 1 + self.rng.randrange(100) if name == VALUED else None
            events.append((name, f"user-{sender}-{serial}-{i}", value))
        batch = Batch(events)
        self.batches.append(batch)
        return batch

    async def run(self, sender: int, transport: str) -> None:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel,
            aiohttp.ClientSession(
                f"http://127.0.0.1:{self.rest_port}",
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
            ) as http,
        ):
            stub = pb_grpc.KimballServiceStub(channel)
            while not self.stopping:
                await self.up.wait()
                batch = self.next_batch(sender)
                kills = self.kills
                problem = await (
                    self._grpc(stub, batch) if transport == "grpc" else self._rest(http, batch)
                )
                if problem is None:
                    batch.acked = True
                    continue
                self.retry.append(batch)  # no answer: it may be spooled; send it again
                if kills == self.kills:
                    self.unexpected.append(f"{transport} sender {sender}: {problem}")
                    await asyncio.sleep(0.05)

    @staticmethod
    async def _grpc(stub: pb_grpc.KimballServiceStub, batch: Batch) -> str | None:
        events = []
        for name, user, value in batch.events:
            event = pb.Event(namespace=NAMESPACE, event_name=name, user_id=user)
            if value is not None:
                event.value = value
            events.append(event)
        try:
            answer = await stub.TrackEvents(
                pb.TrackEventsRequest(events=events), metadata=AUTH, timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return None if answer.accepted == len(events) else f"accepted {answer.accepted}"

    @staticmethod
    async def _rest(http: aiohttp.ClientSession, batch: Batch) -> str | None:
        body = [
            {"namespace": NAMESPACE, "event_name": name, "user_id": user}
            | ({"value": value} if value is not None else {})
            for name, user, value in batch.events
        ]
        try:
            async with http.post("/v0/analytics", json=body, headers=dict(AUTH)) as response:
                if response.status == 204:
                    return None
                return f"HTTP {response.status}: {await response.text()}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def expected(self) -> tuple[dict[str, int], int]:
        """Users per event name, and the sum of the valued event's values."""
        users: dict[str, int] = dict.fromkeys(NAMES, 0)
        total = 0
        for batch in self.batches:
            for name, _, value in batch.events:
                users[name] += 1
                total += value or 0
        return users, total


async def analytics(port: int) -> tuple[dict[str, int], float]:
    """Named counters of the test's namespace on the api server, and the valued one's sum."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = await pb_grpc.KimballServiceStub(channel).GetAnalytics(
            pb.GetAnalyticsRequest(namespace=NAMESPACE), metadata=AUTH, timeout=CALL_TIMEOUT
        )
    named = [c for c in answer.counts if c.type == pb.COUNTER_TYPE_NAMED]
    counts = {c.name: c.count for c in named}
    total = next((c.value.sum for c in named if c.name == VALUED), 0.0)
    return counts, total


async def test_acknowledged_events_arrive_exactly_once_through_kills(tmp_path):
    processes = Processes(tmp_path)
    senders = Senders(processes.sidecar_grpc, processes.sidecar_rest)
    rng = random.Random(SEED)
    try:
        processes.start_api()
        processes.start_sidecar()
        senders.up.set()
        tasks = [
            asyncio.create_task(senders.run(0, "grpc")),
            asyncio.create_task(senders.run(1, "grpc")),
            asyncio.create_task(senders.run(2, "rest")),
        ]
        for kind in ROUNDS:
            await asyncio.sleep(rng.uniform(*RUN_SECONDS))
            if kind in ("api", "both"):
                await asyncio.to_thread(processes.kill, "api")
                await asyncio.sleep(DOWN_SECONDS)  # the sidecar takes events meanwhile
            if kind in ("sidecar", "both"):
                senders.up.clear()
                senders.kills += 1
                await asyncio.to_thread(processes.kill, "sidecar")
                await asyncio.to_thread(processes.start_sidecar)
                senders.up.set()
            if kind in ("api", "both"):
                await asyncio.to_thread(processes.start_api)
        await asyncio.sleep(rng.uniform(*RUN_SECONDS))
        senders.stopping = True
        await asyncio.gather(*tasks)
        # Clients send what got no answer again, until every batch is acknowledged.
        while senders.retry:
            batch = senders.retry[0]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{processes.sidecar_grpc}") as ch:
                problem = await Senders._grpc(pb_grpc.KimballServiceStub(ch), batch)
            assert problem is None, problem
            batch.acked = True
            senders.retry.pop(0)
        assert all(b.acked for b in senders.batches)

        async def delivered() -> bool:
            return await asyncio.to_thread(processes.spool_pending) == 0

        await until(delivered, "the sidecar to deliver its whole spool", DELIVERY_SECONDS, 0.1)
        counts, total = await analytics(processes.api_grpc)
        users, expected_total = senders.expected()
        context = "\n".join(processes.log)
        assert counts == users, context
        assert total == expected_total, context
        assert not senders.unexpected, senders.unexpected[:5]
        assert sum(users.values()) > 10 * BATCH  # the senders did send during the rounds
    finally:
        senders.stopping = True
        senders.up.set()
        processes.stop_all()
