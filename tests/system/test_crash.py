"""Crash test: ``kimball serve`` as a real process, killed with SIGKILL while events come in.

Two gRPC and two REST senders send batches concurrently; at a random moment the server
is killed (requests in flight), then restarted on the same data directory, ROUNDS times.
Every batch is ACKED (the server said yes) or UNKNOWN (no answer: it may or may not be in
the log). An UNKNOWN batch is sent again in the next round (at-least-once retry), so a
batch ends ACKED if any attempt was answered. After every restart the server's analytics
must lie between two reference models: one fed only the acknowledged batches (nothing
acknowledged may be lost) and one fed every batch sent (nothing may be invented beyond
what applying a retried request twice gives: applying is idempotent).

Reproduce a run with ``KIMBALL_CRASH_SEED=<seed>`` (printed in every failure).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import signal
import subprocess
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import grpc
import pytest
from support.kimball_process import output_after_listening, read_until_listening, start

from kimball_grpc.codec.proto_mapping import event_to_proto
from kimball_grpc.core.bloom import first_slice_error_probability, optimal_bits, optimal_hashes
from kimball_grpc.core.counter_config import GLOBAL_RULE
from kimball_grpc.core.events import Event
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

# Under pytest-xdist the kill -9 tests run one after the other on one worker: each drives
# a server and its senders flat out, and together they would share the cores and make
# each other's kill moments and delivery times less predictable.
pytestmark = pytest.mark.xdist_group("sigkill")

SEED = int(os.environ.get("KIMBALL_CRASH_SEED", "20261128"))
ROUNDS = 8  # kill points while events come in, plus one at start-up (STARTUP_KILL_ROUND)
STARTUP_KILL_ROUND = 5
TOKEN = "crash-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
NAMESPACES = ("shop", "blog")
BATCH = 20
HOT_USERS = 300  # a pool every batch draws most of its users from
# A user seen in no other batch, in each batch while a sender's budget lasts: losing any
# acknowledged batch then shows in the counts. The budget bounds the distinct users (see
# ``expected_global_false_positives``) however fast the machine.
FRESH_PER_BATCH = 1
FRESH_BUDGET = 700  # per sender
# Each event name's counter filter (CONFIG below). ``click`` has weekly counters too.
SCALABLE = ("view", "search")
WEEKLY = ("click",)
EVENT_NAMES = (*SCALABLE, *WEEKLY, "cart", "share", "signup", "login", "review", "refund")
GOAL = "checkout"  # always sent with ensure_goal
SOMETIMES_GOAL = "signup"  # sent with ensure_goal in some events only
ALL_NAMES = (*EVENT_NAMES, GOAL)
VALUED = ("cart", GOAL)  # events with a value: the same for every event of a (user, name)
# Weekly counters count per ISO week of the event's datetime: click events carry one of
# these, fixed per user, so each weekly counter has an exact reference too.
WEEKS = (datetime(2024, 3, 6, 12, tzinfo=UTC), datetime(2024, 3, 13, 12, tzinfo=UTC))
RUN_SECONDS = (0.2, 1.0)  # how long the senders run before the kill
CALL_TIMEOUT = 10.0
# Rounds that vary the server: frequent snapshots (kills land during and right after
# them), and the ``interval`` fsync policy (a process crash must lose nothing with it).
ROUND_ENV = {
    1: {"KIMBALL_SNAPSHOT_INTERVAL": "0.2"},
    2: {"KIMBALL_SNAPSHOT_INTERVAL": "0.05"},
    4: {"KIMBALL_WAL_FSYNC": "interval"},
    6: {"KIMBALL_SNAPSHOT_INTERVAL": "0.2", "KIMBALL_WAL_FSYNC": "interval"},
}

# Bloom filter false positives make a count SMALLER than the true number of distinct users
# (a new user taken for a known one is not counted), never larger. The checks below allow
# no such slack: the counter rules make it negligible. Named counters use filters at
# error probability 1e-9 (a false positive in this test: about 1e-9 * users, i.e. never);
# the global counter's rule is fixed (GLOBAL_RULE: a first slice of 4,096 users at
# 0.0002) and ``expected_global_false_positives`` checks the test stays far below one.
CONFIG = f"""[{{features, [
    {{api_auth_tokens, [<<"{TOKEN}">>]}},
    {{counters, #{{init => [
        #{{pattern => <<"^(view|search)$">>, type => bloom_scalable, size => 16,
          error_probability => 1.0e-9}},
        #{{pattern => <<"^click$">>, type => bloom_fixed_size, size => 8192,
          error_probability => 1.0e-9, date_cohort => weekly}},
        #{{pattern => <<"">>, type => bloom_fixed_size, size => 8192,
          error_probability => 1.0e-9}}
    ]}}}}
]}}].
"""


@dataclass(frozen=True)
class Sent:
    namespace: str
    name: str
    user: str
    value: int | None
    ensure_goal: bool
    when: datetime | None


@dataclass
class Batch:
    events: list[Sent]
    acked: bool = False
    attempts: int = 0


@dataclass
class Round:
    """What happened in one round: for the checks and for failure messages."""

    number: int
    env: dict[str, str]
    log: list[str] = field(default_factory=list)
    acked: int = 0
    failed: int = 0
    in_flight_at_kill: int = 0
    run_seconds: float = 0.0
    return_code: int | None = None
    unexpected: list[str] = field(default_factory=list)  # failures while the server was up

    def summary(self) -> str:
        return (
            f"round {self.number} {self.env or ''}: ran {self.run_seconds:.2f} s, "
            f"{self.acked} acked, {self.failed} failed, {self.in_flight_at_kill} in flight "
            f"at the kill, exit {self.return_code}"
        )


def value_of(user: str, name: str) -> int | None:
    """A whole number (sums stay exact in a double) fixed per (user, name)."""
    return 1 + zlib.crc32(f"{user}/{name}".encode()) % 100 if name in VALUED else None


def week_of(user: str, name: str) -> datetime | None:
    return WEEKS[zlib.crc32(user.encode()) % 2] if name in WEEKLY else None


class Sender:
    """One client: makes batches from its own seeded RNG, keeps the ones to send again."""

    def __init__(self, number: int, transport: str) -> None:
        self.number = number
        self.transport = transport
        self.rng = random.Random(f"{SEED}/{number}")
        self.batches: list[Batch] = []
        self.retry: list[Batch] = []

    def next_batch(self) -> Batch:
        if self.retry:
            return self.retry.pop(0)
        rng = self.rng
        serial = len(self.batches)
        fresh = FRESH_PER_BATCH if serial * FRESH_PER_BATCH < FRESH_BUDGET else 0
        users = [f"fresh-{self.number}-{serial}-{i}" for i in range(fresh)]
        users += [f"user-{rng.randrange(HOT_USERS)}" for _ in range(BATCH - fresh)]
        events = []
        for user in users:
            name = rng.choice(ALL_NAMES)
            goal = name == GOAL or (name == SOMETIMES_GOAL and rng.random() < 0.05)
            events.append(
                Sent(
                    rng.choice(NAMESPACES),
                    name,
                    user,
                    value_of(user, name),
                    goal,
                    week_of(user, name),
                )
            )
        batch = Batch(events)
        self.batches.append(batch)
        return batch


def to_proto(event: Sent) -> pb.Event:
    return event_to_proto(
        Event(event.name, event.user, event.namespace, event.value, event.when, event.ensure_goal)
    )


def to_json(event: Sent) -> dict[str, object]:
    body: dict[str, object] = {
        "namespace": event.namespace,
        "event_name": event.name,
        "user_id": event.user,
    }
    if event.ensure_goal:
        body["ensure_goal"] = True
    if event.value is not None:
        body["value"] = event.value
    if event.when is not None:
        body["datetime"] = event.when.isoformat().replace("+00:00", "Z")
    return body


class Traffic:
    """The senders of one round against one server process."""

    def __init__(self, grpc_port: int, rest_port: int) -> None:
        self.grpc_port = grpc_port
        self.rest_port = rest_port
        self.killed = False
        self.in_flight = 0

    async def run(self, sender: Sender, result: Round) -> None:
        if sender.transport == "grpc":
            async with grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
                stub = pb_grpc.KimballServiceStub(channel)
                await self._loop(sender, result, lambda batch: self._grpc(stub, batch))
        else:
            base = f"http://127.0.0.1:{self.rest_port}"
            timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
            async with aiohttp.ClientSession(base, timeout=timeout) as http:
                await self._loop(sender, result, lambda batch: self._rest(http, batch))

    async def _loop(self, sender: Sender, result: Round, send) -> None:
        while not self.killed:
            batch = sender.next_batch()
            batch.attempts += 1
            self.in_flight += 1
            try:
                problem = await send(batch)
            finally:
                self.in_flight -= 1
            if problem is None:
                batch.acked = True
                result.acked += 1
                continue
            sender.retry.append(batch)  # UNKNOWN: it may be in the log; send it again
            result.failed += 1
            if not self.killed:
                result.unexpected.append(f"sender {sender.number} ({sender.transport}): {problem}")
                return

    @staticmethod
    async def _grpc(stub: pb_grpc.KimballServiceStub, batch: Batch) -> str | None:
        request = pb.TrackEventsRequest(events=[to_proto(e) for e in batch.events])
        try:
            answer = await stub.TrackEvents(request, metadata=AUTH, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        if answer.accepted != len(batch.events):
            return f"accepted {answer.accepted} of {len(batch.events)}"
        return None

    @staticmethod
    async def _rest(http: aiohttp.ClientSession, batch: Batch) -> str | None:
        body = [to_json(e) for e in batch.events]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            async with http.post("/v0/analytics", json=body, headers=headers) as answer:
                if answer.status == 204:
                    return None
                return f"HTTP {answer.status}: {(await answer.text())[:300]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"


# -- the reference model ------------------------------------------------------------------


@dataclass
class Model:
    """Users per counter, goals and namespaces that the given batches make."""

    named: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    weekly: dict[tuple[str, str, int, int], set[str]] = field(
        default_factory=lambda: defaultdict(set)
    )
    users: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    goals: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def of(cls, batches: list[Batch]) -> Model:
        model = cls()
        for batch in batches:
            for e in batch.events:
                model.named[e.namespace, e.name].add(e.user)
                model.users[e.namespace].add(e.user)
                if e.when is not None:
                    year, week, _ = e.when.isocalendar()
                    model.weekly[e.namespace, e.name, year, week].add(e.user)
                if e.ensure_goal:
                    model.goals[e.namespace].add(e.name)
        return model

    def value_sum(self, namespace: str, name: str) -> int:
        return sum(value_of(u, name) or 0 for u in self.named.get((namespace, name), ()))


def expected_global_false_positives(users: int) -> float:
    """Expected false positives of a namespace's global counter after ``users`` distinct
    users, while they fit its first slice (sum over inserts of (1 - e^(-k n / m))^k)."""
    assert users <= GLOBAL_RULE.size, "more users than the global filter's first slice"
    error = first_slice_error_probability(GLOBAL_RULE.error_probability)
    bits = optimal_bits(GLOBAL_RULE.size, error)
    hashes = optimal_hashes(bits, GLOBAL_RULE.size)
    return sum((1 - math.exp(-hashes * n / bits)) ** hashes for n in range(users))


async def server_state(port: int) -> dict[str, object]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        kw = {"metadata": AUTH, "timeout": CALL_TIMEOUT}
        listed = await stub.ListNamespaces(pb.ListNamespacesRequest(), **kw)
        state: dict[str, object] = {"namespaces": list(listed.namespaces)}
        for ns in NAMESPACES:
            analytics = await stub.GetAnalytics(pb.GetAnalyticsRequest(namespace=ns), **kw)
            goals = await stub.ListGoals(pb.ListGoalsRequest(namespace=ns), **kw)
            state[ns] = (list(analytics.counts), set(goals.goals))
        return state


def compare(state: dict[str, object], lower: Model, upper: Model) -> list[str]:
    """Every way the server's state falls outside [lower, upper]."""
    problems = []

    def within(what: str, got: float, low: float, high: float) -> None:
        if not low <= got <= high:
            problems.append(f"{what}: {got}, expected between {low} and {high}")

    acked_namespaces = {ns for ns, users in lower.users.items() if users}
    if not acked_namespaces <= set(state["namespaces"]) <= set(upper.users):
        problems.append(
            f"namespaces {state['namespaces']}: acked {sorted(acked_namespaces)}, "
            f"sent {sorted(upper.users)}"
        )
    for ns in NAMESPACES:
        counts, goals = state[ns]
        if not lower.goals[ns] <= goals <= upper.goals[ns]:
            problems.append(
                f"{ns}: goals {sorted(goals)}: acked {sorted(lower.goals[ns])}, "
                f"sent {sorted(upper.goals[ns])}"
            )
        seen_named = set()
        seen_weekly = set()
        for c in counts:
            if c.type == pb.COUNTER_TYPE_INTERNAL:
                within(f"{ns}: distinct users", c.count, len(lower.users[ns]), len(upper.users[ns]))
                continue
            if c.type == pb.COUNTER_TYPE_NAMED:
                key = (ns, c.name)
                seen_named.add(key)
                low, high = lower.named.get(key, set()), upper.named.get(key, set())
            else:
                key4 = (ns, c.name, c.year, c.week)
                seen_weekly.add(key4)
                low, high = lower.weekly.get(key4, set()), upper.weekly.get(key4, set())
            label = f"{ns}: {c.name}" + (f" week {c.year}-{c.week}" if c.week else "")
            if not high:
                problems.append(f"{label}: a counter no batch could have made ({c.count} users)")
                continue
            within(f"{label} count", c.count, len(low), len(high))
            if c.type == pb.COUNTER_TYPE_NAMED:
                low_sum = lower.value_sum(ns, c.name)
                within(f"{label} value sum", c.value.sum, low_sum, upper.value_sum(ns, c.name))
                if c.goal != (c.name in goals):
                    problems.append(f"{label}: goal flag {c.goal}, goals are {sorted(goals)}")
        for key, users in lower.named.items():
            if key[0] == ns and users and key not in seen_named:
                problems.append(f"{ns}: counter {key[1]} missing ({len(users)} users acked)")
        for key, users in lower.weekly.items():
            if key[0] == ns and users and key not in seen_weekly:
                problems.append(f"{ns}: weekly counter {key[1:]} missing ({len(users)} acked)")
        if not any(c.type == pb.COUNTER_TYPE_INTERNAL for c in counts) and lower.users[ns]:
            problems.append(f"{ns}: no global counter")
    return problems


# -- the test -----------------------------------------------------------------------------


RESTORED = re.compile(r"state restored: snapshot up to record (\d+), (\d+) records replayed")


def start_server(data_dir: Path, config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return start("--grpc-port", "0", "--data-dir", str(data_dir), "--config", str(config), env=env)


async def ready(process: subprocess.Popen[str], result: Round) -> tuple[int, int]:
    listening = await asyncio.to_thread(read_until_listening, process)
    result.log.extend(listening.lines)
    assert listening.grpc_port and listening.rest_port, listening.lines
    assert any("Kimball ready" in line for line in listening.lines), listening.lines
    return listening.grpc_port, listening.rest_port


async def reap(process: subprocess.Popen[str], result: Round) -> None:
    """After the SIGKILL: its exit code and the rest of its log (the pipe ends with it)."""
    result.return_code = await asyncio.to_thread(process.wait, 30)
    result.log.extend(await asyncio.to_thread(output_after_listening, process))


def failure_report(rounds: list[Round], problems: list[str], tail: int = 12) -> str:
    lines = [f"seed {SEED}: {len(problems)} problems", *problems[:40], ""]
    for r in rounds:
        lines.append(r.summary())
        lines += [f"    {line.rstrip()}" for line in r.log[-tail:]]
        lines += [f"    unexpected: {u}" for u in r.unexpected]
    return "\n".join(lines)


async def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    config = tmp_path / "app.config"
    config.write_text(CONFIG)
    data_dir = tmp_path / "data"
    rng = random.Random(SEED)
    senders = [Sender(0, "grpc"), Sender(1, "grpc"), Sender(2, "rest"), Sender(3, "rest")]
    rounds: list[Round] = []
    process: subprocess.Popen[str] | None = None

    async def check(port: int) -> tuple[list[str], dict[str, object]]:
        batches = [b for s in senders for b in s.batches]
        state = await server_state(port)
        lower, upper = Model.of([b for b in batches if b.acked]), Model.of(batches)
        return compare(state, lower, upper), state

    try:
        for number in range(ROUNDS):
            result = Round(number, ROUND_ENV.get(number, {}))
            rounds.append(result)
            if number == STARTUP_KILL_ROUND:
                # One more kill point: while the state is being restored (or just after).
                process = start_server(data_dir, config, result.env)
                listening = await asyncio.to_thread(read_until_listening, process, ready=False)
                result.log.extend(listening.lines)
                os.kill(process.pid, signal.SIGKILL)
                await reap(process, result)
                assert result.return_code == -signal.SIGKILL, failure_report(rounds, ["exit"])
                result.log.append("---- killed at start-up, started again ----\n")
            process = start_server(data_dir, config, result.env)
            grpc_port, rest_port = await ready(process, result)
            # What the previous kills left must already be right, before new traffic.
            problems, _ = await check(grpc_port)
            assert not problems, failure_report(rounds, problems)

            traffic = Traffic(grpc_port, rest_port)
            tasks = [asyncio.create_task(traffic.run(s, result)) for s in senders]
            result.run_seconds = rng.uniform(*RUN_SECONDS)
            await asyncio.sleep(result.run_seconds)  # the random kill moment: the point here
            if process.poll() is None:
                result.in_flight_at_kill = traffic.in_flight
                os.kill(process.pid, signal.SIGKILL)  # still its pid: not waited for yet
            else:
                result.unexpected.append("the server died before the kill")
            traffic.killed = True  # no new batches; answers still pending are UNKNOWN
            await reap(process, result)
            await asyncio.wait_for(asyncio.gather(*tasks), CALL_TIMEOUT * 2)
            assert not result.unexpected, failure_report(rounds, ["unexpected failures"])
            assert result.return_code == -signal.SIGKILL, failure_report(rounds, ["exit code"])

        final = Round(ROUNDS, {})
        rounds.append(final)
        process = start_server(data_dir, config, {})
        grpc_port, _ = await ready(process, final)
        problems, state = await check(grpc_port)
        os.kill(process.pid, signal.SIGKILL)
        await reap(process, final)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    report = failure_report(rounds, problems)
    assert not problems, report
    batches = [b for s in senders for b in s.batches]
    # The test did what it says: kills with requests in flight, most batches answered,
    # batches sent again after a kill and answered, a restart from a snapshot plus the log.
    assert all(r.in_flight_at_kill > 0 and r.acked > 0 for r in rounds[:ROUNDS]), report
    assert sum(b.acked for b in batches) > len(batches) // 2, report
    assert any(b.attempts > 1 and b.acked for b in batches), report
    restored = [
        tuple(map(int, found.groups()))
        for r in rounds
        for found in map(RESTORED.search, r.log)
        if found
    ]
    assert any(snapshot and replayed for snapshot, replayed in restored), report
    # A kill may tear the log's last entry (cut at start-up, one warning); anything else
    # logged as a warning or an error after a crash means something is off.
    odd = [
        line
        for r in rounds
        for line in r.log
        if any(word in line for word in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))
        and "cut a damaged or torn tail" not in line
    ]
    assert not odd, "\n".join([*odd, report])
    # Counts are checked without Bloom filter slack (see CONFIG): keep that true.
    upper = Model.of(batches)
    for ns in NAMESPACES:
        users = len(upper.users[ns])
        assert expected_global_false_positives(users) < 1e-3, f"seed {SEED}: {users} users"
    named = {(ns, c.name) for ns in NAMESPACES for c in state[ns][0] if c.name in ALL_NAMES}
    assert len(named) == len(NAMESPACES) * len(ALL_NAMES), report
