"""Soak: minutes of mixed load on one ``kimball serve``, with a kill -9 and restart halfway.

REST and gRPC ingestion, analytics and prediction queries, a live subscription, feature
flag evaluations and snapshots every ``--snapshot-interval`` seconds, all at once. Each
acknowledged event has a user id of its own and the counters' false-positive rate is
1e-9, so after the restart and at the end every counter must hold at least the events
acknowledged and at most those sent. Prints the server's RSS over time, p50/p99 latency
and errors per call, and acknowledged against present events per counter; ``--json``
writes the same. Calls that fail while the server is down on purpose are counted apart.

    python bench/soak.py                              # 10 minutes
    python bench/soak.py --seconds 60 --json soak.json

Exits 1 if an acknowledged event is missing, a counter holds more than was sent, or a
call failed while the server was up.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc

# Bench modules next to this one.
from figures import percentile
from run_options import print_header
from servers import AUTH, BENCH_TOKEN, CHANNEL_OPTIONS, ServerProcess, kimball_argv

from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

BATCH = 100
GRPC_EVENT = "soak_grpc"
REST_EVENT = "soak_rest"
GOAL_EVENT = "soak_buy"  # one per REST batch, marking the goal
FLAG = "soak_flag"
# Named counters at p = 1e-9: a lost acknowledged event shows as a count below the acked.
COUNTER_RULES = (
    '{counters, #{init => [#{pattern => <<"^soak_">>, type => bloom_scalable, '
    "size => 1024, error_probability => 1.0e-9}]}}"
)
HEADERS = {"Authorization": f"Bearer {BENCH_TOKEN}"}
# Reconnect within a fraction of a second once the restarted server listens again.
QUICK_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


@dataclass
class Calls:
    """Latencies and failures of one kind of call."""

    seconds: list[float] = field(default_factory=list)
    errors: int = 0  # while the server was up: each one is a finding
    outage_errors: int = 0  # overlapping the kill and restart, expected


@dataclass
class Soak:
    """One soak run: the server, the load, and what it saw."""

    server: ServerProcess
    seconds: float
    events_per_second: float
    kill_at: float | None  # seconds into the run, or None for no kill
    calls: dict[str, Calls] = field(default_factory=lambda: defaultdict(Calls))
    sent: Counter[str] = field(default_factory=Counter)
    acked: Counter[str] = field(default_factory=Counter)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)
    received: int = 0  # events the subscription delivered
    outages: list[tuple[float, float]] = field(default_factory=list)  # (killed, serving again)
    checks: list[str] = field(default_factory=list)  # failed checks, in words
    start: float = 0.0
    http: aiohttp.ClientSession | None = None
    _down_since: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def record(self, name: str, began: float, failed: bool) -> None:
        """One call of ``name`` that began at ``began`` (monotonic) and ended now."""
        ended = time.monotonic()
        calls = self.calls[name]
        if not failed:
            calls.seconds.append(ended - began)
        elif self._overlaps_outage(began, ended):
            calls.outage_errors += 1
        else:
            calls.errors += 1

    def _overlaps_outage(self, began: float, ended: float) -> bool:
        if self._down_since is not None and ended >= self._down_since:
            return True
        return any(began <= back and ended >= killed for killed, back in self.outages)

    async def paced(self, share: float) -> None:
        """Sleep so that a sender with ``share`` of the event rate keeps to it."""
        await asyncio.sleep(BATCH / (self.events_per_second * share))

    # -- the load -----------------------------------------------------------------

    async def grpc_sender(self, index: int, stub: pb_grpc.KimballServiceStub) -> None:
        n = 0
        while self.elapsed() < self.seconds:
            users = [f"g{index}-{n + i}" for i in range(BATCH)]
            n += BATCH
            request = pb.TrackEventsRequest(
                events=[pb.Event(event_name=GRPC_EVENT, user_id=u) for u in users]
            )
            self.sent[GRPC_EVENT] += BATCH
            began = time.monotonic()
            try:
                await stub.TrackEvents(request, metadata=AUTH, timeout=10)
                self.acked[GRPC_EVENT] += BATCH
                self.record("grpc TrackEvents", began, False)
            except grpc.aio.AioRpcError:
                self.record("grpc TrackEvents", began, True)
            await self.paced(0.25)

    async def rest_sender(self, index: int) -> None:
        n = 0
        while self.elapsed() < self.seconds:
            users = [f"r{index}-{n + i}" for i in range(BATCH - 1)]
            goal_user = f"r{index}-{n}"
            n += BATCH
            events = [{"event_name": REST_EVENT, "user_id": u, "value": 1.5} for u in users]
            events.append({"event_name": GOAL_EVENT, "user_id": goal_user, "ensure_goal": True})
            self.sent[REST_EVENT] += len(users)
            self.sent[GOAL_EVENT] += 1
            if await self._http("REST POST /v0/analytics", "POST", "/v0/analytics", events):
                self.acked[REST_EVENT] += len(users)
                self.acked[GOAL_EVENT] += 1
            await self.paced(0.25)

    async def queries(self, stub: pb_grpc.KimballServiceStub) -> None:
        while self.elapsed() < self.seconds:
            began = time.monotonic()
            try:
                await stub.GetAnalytics(pb.GetAnalyticsRequest(), metadata=AUTH, timeout=10)
                self.record("grpc GetAnalytics", began, False)
            except grpc.aio.AioRpcError:
                self.record("grpc GetAnalytics", began, True)
            await self._http("REST GET /v0/predictions", "GET", "/v0/predictions")
            await asyncio.sleep(0.2)

    async def flags(self) -> None:
        spec = {"name": FLAG, "boolean": False, "user": [["plan", "in", ["pro", "team"]]]}
        put = ("REST POST /v0/featureSpecs", "POST", "/v0/featureSpecs", spec)
        while await self._http(*put) is None:
            if self.elapsed() >= self.seconds:
                return
            await asyncio.sleep(0.5)
        n = 0
        while self.elapsed() < self.seconds:
            user = {"user_id": f"f{n}", "plan": "pro" if n % 2 else "free"}
            query = "?user_obj=" + _b64(user) + "&context_obj=" + _b64({})
            answer = await self._http("REST GET /v0/features", "GET", "/v0/features" + query)
            if answer is not None and answer["features"].get(FLAG) != bool(n % 2):
                self.checks.append(f"flag {FLAG} answered {answer} for {user}")
            n += 1
            await asyncio.sleep(0.05)

    async def subscriber(self, stub: pb_grpc.KimballServiceStub) -> None:
        """A live subscription to the gRPC events, opened again after the restart."""
        while self.elapsed() < self.seconds:
            began = time.monotonic()
            call = stub.Subscribe(pb.SubscribeRequest(event_names=[GRPC_EVENT]), metadata=AUTH)

            async def read(call: grpc.aio.UnaryStreamCall = call) -> None:
                async for _ in call:
                    self.received += 1

            try:
                await asyncio.wait_for(read(), max(0.0, self.seconds - self.elapsed()))
                self.record("grpc Subscribe", began, False)
            except TimeoutError:  # read to the end of the run
                self.record("grpc Subscribe", began, False)
            except grpc.aio.AioRpcError:
                self.record("grpc Subscribe", began, True)
                await asyncio.sleep(0.5)
            finally:
                call.cancel()

    async def _http(self, name: str, method: str, path: str, body: object = None) -> object:
        """The JSON answer (True for a 204), or None if the call failed."""
        began = time.monotonic()
        url = f"http://127.0.0.1:{self.server.http_port}{path}"
        assert self.http is not None
        try:
            async with self.http.request(
                method, url, json=body, headers=HEADERS, timeout=aiohttp.ClientTimeout(total=10)
            ) as answer:
                failed = answer.status >= 300
                result = None if failed else (await answer.json() if answer.status == 200 else True)
        except (aiohttp.ClientError, TimeoutError):
            failed, result = True, None
        self.record(name, began, failed)
        return result

    # -- the server -----------------------------------------------------------------

    async def watch_rss(self, every: float) -> None:
        while self.elapsed() < self.seconds:
            with contextlib.suppress(OSError, AssertionError):
                self.rss_mb.append((self.elapsed(), _rss_mb(self.server)))
            await asyncio.sleep(every)

    async def kill_and_restart(
        self, channel: grpc.aio.Channel, stub: pb_grpc.KimballServiceStub
    ) -> None:
        assert self.kill_at is not None and self.server.process is not None
        await asyncio.sleep(self.kill_at)
        acked = Counter(self.acked)
        self._down_since = time.monotonic()
        self.server.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.server.process.wait)
        self.server.start()
        await asyncio.to_thread(self.server.wait_serving, 60.0)
        # Back once this client's own channel has reconnected (it backs off while refused).
        await asyncio.wait_for(channel.channel_ready(), 30)
        self.outages.append((self._down_since, time.monotonic()))
        self._down_since = None
        await self.check_counts(stub, acked, "after the restart")

    async def check_counts(
        self, stub: pb_grpc.KimballServiceStub, acked: Counter[str], when: str
    ) -> dict[str, int]:
        """Each counter holds at least ``acked`` and at most what was sent so far."""
        answer = await stub.GetAnalytics(
            pb.GetAnalyticsRequest(), metadata=AUTH, timeout=30, wait_for_ready=True
        )
        present = {c.name: c.count for c in answer.counts if c.name.startswith("soak_")}
        for name in (GRPC_EVENT, REST_EVENT, GOAL_EVENT):
            have = present.get(name, 0)
            if have < acked[name]:
                self.checks.append(f"{when}: {name} holds {have}, {acked[name]} acknowledged")
            if have > self.sent[name]:
                self.checks.append(f"{when}: {name} holds {have}, only {self.sent[name]} sent")
        return present

    async def run(self, rss_every: float) -> dict[str, object]:
        self.server.start()
        await asyncio.to_thread(self.server.wait_serving, 60.0)
        self.start = time.monotonic()
        target = f"127.0.0.1:{self.server.port}"
        async with (
            grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS + QUICK_RECONNECT) as channel,
            aiohttp.ClientSession() as self.http,
        ):
            stub = pb_grpc.KimballServiceStub(channel)
            load = [
                self.grpc_sender(0, stub),
                self.grpc_sender(1, stub),
                self.rest_sender(0),
                self.rest_sender(1),
                self.queries(stub),
                self.flags(),
                self.subscriber(stub),
                self.watch_rss(rss_every),
            ]
            if self.kill_at is not None:
                load.append(self.kill_and_restart(channel, stub))
            # Bounded: a call that never returns is a finding, not a hang.
            await asyncio.wait_for(asyncio.gather(*load), self.seconds + 120)
            present = await self.check_counts(stub, self.acked, "at the end")
        stopping = time.monotonic()
        self.server.stop()
        return self.summary(present, time.monotonic() - stopping)

    def summary(self, present: dict[str, int], stop_seconds: float) -> dict[str, object]:
        return {
            "seconds": self.seconds,
            "calls": {
                name: {
                    "ok": len(c.seconds),
                    "errors": c.errors,
                    "outage_errors": c.outage_errors,
                    "p50_ms": 1000 * percentile(c.seconds, 0.5) if c.seconds else None,
                    "p99_ms": 1000 * percentile(c.seconds, 0.99) if c.seconds else None,
                }
                for name, c in sorted(self.calls.items())
            },
            "counters": {
                name: {
                    "sent": self.sent[name],
                    "acked": self.acked[name],
                    "present": present.get(name, 0),
                }
                for name in (GRPC_EVENT, REST_EVENT, GOAL_EVENT)
            },
            "subscription_events": self.received,
            "rss_mb": [[round(t, 1), round(mb, 1)] for t, mb in self.rss_mb],
            "outage_seconds": [round(back - killed, 2) for killed, back in self.outages],
            "sigterm_seconds": round(stop_seconds, 2),
            "failed_checks": self.checks,
        }


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def _rss_mb(server: ServerProcess) -> float:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmRSS")


def print_summary(summary: dict[str, object]) -> None:
    calls = summary["calls"]
    assert isinstance(calls, dict)
    print(f"{'call':28} {'ok':>7} {'errors':>6} {'outage':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for name, c in calls.items():
        p50 = "-" if c["p50_ms"] is None else f"{c['p50_ms']:.1f}"
        p99 = "-" if c["p99_ms"] is None else f"{c['p99_ms']:.1f}"
        print(f"{name:28} {c['ok']:>7} {c['errors']:>6} {c['outage_errors']:>6} {p50:>8} {p99:>8}")
    print()
    print(f"{'counter':12} {'sent':>9} {'acked':>9} {'present':>9}")
    counters = summary["counters"]
    assert isinstance(counters, dict)
    for name, c in counters.items():
        print(f"{name:12} {c['sent']:>9} {c['acked']:>9} {c['present']:>9}")
    print()
    print("server RSS (s: MB):", "  ".join(f"{t:g}: {mb:g}" for t, mb in summary["rss_mb"]))
    print(f"subscription events: {summary['subscription_events']}")
    print(f"kill -9 to serving again (s): {summary['outage_seconds']}")
    print(f"SIGTERM to exit (s): {summary['sigterm_seconds']}")
    for check in summary["failed_checks"]:
        print("FAILED:", check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the run")
    parser.add_argument(
        "--events-per-second", type=float, default=20_000.0, help="ingestion, REST and gRPC"
    )
    parser.add_argument(
        "--snapshot-interval", type=int, default=30, help="seconds between snapshots"
    )
    parser.add_argument("--no-kill", action="store_true", help="no kill -9 halfway through the run")
    parser.add_argument("--rss-every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    print_header("soak.py", "gateway", "storage")
    with tempfile.TemporaryDirectory(prefix="kimball-soak-") as work:
        server = ServerProcess(
            "kimball",
            [],
            cpu=None,
            cwd=work,
            env={"KIMBALL_SNAPSHOT_INTERVAL": str(args.snapshot_interval)},
        )
        server.argv = kimball_argv(server, str(Path(work) / "data"), features=COUNTER_RULES)
        soak = Soak(
            server, args.seconds, args.events_per_second, None if args.no_kill else args.seconds / 2
        )
        try:
            summary = asyncio.run(soak.run(args.rss_every))
        finally:
            server.stop()
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    unexpected = sum(c["errors"] for c in summary["calls"].values())  # type: ignore[union-attr]
    return 1 if summary["failed_checks"] or unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
