"""Cluster mode as deployed: a real 3-node NATS JetStream cluster on loopback, 3 ``kimball
serve --nats-url`` replica processes, and one single-node ``kimball serve`` process for
reference. The same events, spread over every replica by REST and gRPC, and sent to the
single node, give equal answers: analytics, goals, namespaces, predictions (all, for events,
for a user), nudges and flags. Equal again after kill -9 of a NATS node and of a replica
during ingest (nothing acknowledged is lost), after a fourth replica joins (partitions
move), and after a replica paused longer than its lease comes back (its partitions were
taken over; it applies nothing stale).

One cluster for the module; each test writes to its own namespace, and compares every
namespace so far, so a later disturbance that lost an earlier test's events shows too.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from support.kimball_process import (
    KIMBALL,
    _drains,
    read_until_listening,
    start,
    stop,
    wait_for_output,
)
from support.nats_cluster import NatsCluster
from support.polling import until
from support.ports import free_port

from kimball_grpc.codec.proto_mapping import event_to_proto
from kimball_grpc.core.events import Event
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

pytestmark = pytest.mark.xdist_group("nats-cluster")

TOKEN = "cluster-system-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
PARTITIONS = 8
LEASE_SECONDS = 2.0  # short, so that takeovers happen within the test's time
NAMES = ("view", "search", "cart", "share", "buy")
GOAL = "buy"
# Also sent with ensure_goal. Both goals are created before any event: a goal's tallies
# count the users who reach it after it exists, so a goal first made by an event while
# other users' batches are in flight would depend on the order of those batches, which
# concurrent senders leave open (on a single node as in a cluster).
SOMETIMES_GOAL = "signup"
SETTLE_SECONDS = 40.0  # a takeover: a lease, a claim round, a snapshot load and a replay
CALL_TIMEOUT = 10.0
# Filters that make no mistake at this size, on every node. With the default error
# probability a single node's filter and a partition's filter miss different users (a
# false positive there depends on which other users share the filter, and in which order
# they came), so a goal tally could differ by one: docs/scale-out.md, "Why the counts add".
EXACT_COUNTERS = """[{features, [{counters, #{init => [
    #{pattern => ".*", type => bloom_fixed_size, size => 10000, error_probability => 1.0e-9}
]}}]}].
"""


@dataclass
class Node:
    """One ``kimball serve`` process, on ports it keeps across restarts."""

    name: str
    directory: Path
    extra: tuple[str, ...]
    grpc_port: int = field(default_factory=free_port)
    rest_port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        tokens = self.directory / "api-tokens"
        tokens.parent.mkdir(parents=True, exist_ok=True)
        tokens.write_text(TOKEN + "\n")
        config = self.directory.parent / "app.config"
        config.write_text(EXACT_COUNTERS)
        self.process = start(
            "--config", str(config),
            "--grpc-port", str(self.grpc_port),
            "--api-port", str(self.rest_port),
            "--data-dir", str(self.directory / "data"),
            "--api-tokens-file", str(tokens),
            *self.extra,
        )  # fmt: skip
        read_until_listening(self.process, 60)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        stop(self.process)
        self.process = None

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@dataclass
class Cluster:
    """The NATS cluster, the replicas and the single node to compare with."""

    nats: NatsCluster
    replicas: list[Node]
    single: Node
    directory: Path
    namespaces: list[str] = field(default_factory=list)  # every namespace written so far

    def replica(self, index: int) -> Node:
        """Replica ``index``, made (not started) if it is new."""
        while len(self.replicas) <= index:
            name = f"replica-{len(self.replicas)}"
            extra = (
                "--nats-url", ",".join(self.nats.urls),
                "--replica-id", name,
                "--partitions", str(PARTITIONS),
                "--lease-seconds", f"{LEASE_SECONDS:g}",
                # One store for all: a partition's new owner loads its last snapshot.
                "--storage", f"file://{self.directory / 'objects'}",
            )  # fmt: skip
            self.replicas.append(Node(name, self.directory / name, extra))
        return self.replicas[index]

    def log_of(self, name: str) -> list[str]:
        """What the process of replica ``name`` wrote since it started (for failures)."""
        node = next(r for r in self.replicas if r.name == name)
        lines = list(_drains[node.process][1]) if node.process in _drains else []
        return [line for line in lines if "kimball.access" not in line]

    def running(self) -> list[Node]:
        return [r for r in self.replicas if r.process is not None]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("cluster")
    nats = NatsCluster.create(directory / "nats")
    nats.start()
    single = Node("single", directory / "single", ())
    made = Cluster(nats, [], single, directory)
    try:
        single.start()
        for index in range(3):
            made.replica(index).start()
        yield made
    finally:
        for node in [*made.replicas, single]:
            if node.process is not None:
                node.signal(signal.SIGCONT)  # a test that failed while one was stopped
                node.stop()
        nats.stop()


# -- the events ---------------------------------------------------------------------------


def user_batches(namespace: str, users: int, seed: int, per_batch: int = 8) -> list[list[Event]]:
    """Events of ``users`` users in ``namespace``, a user's events all in one batch and in
    order (a user's goal tallies depend on the order of that user's own events only)."""
    rng = random.Random(seed)
    batches: list[list[Event]] = []
    for first in range(0, users, per_batch):
        batch = []
        for u in range(first, min(users, first + per_batch)):
            user = f"{namespace}-user-{u}"
            for _ in range(rng.randint(1, 6)):
                name = rng.choice((*NAMES, SOMETIMES_GOAL))
                ensure = name == SOMETIMES_GOAL and rng.random() < 0.5
                batch.append(Event(name, user, namespace, None, None, ensure))
        batches.append(batch)
    return batches


def as_request(batch: list[Event]) -> pb.TrackEventsRequest:
    return pb.TrackEventsRequest(events=[event_to_proto(e) for e in batch])


async def send_grpc(node: Node, batch: list[Event]) -> None:
    async with grpc.aio.insecure_channel(node.target) as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        await stub.TrackEvents(as_request(batch), metadata=AUTH, timeout=CALL_TIMEOUT)


async def send_rest(node: Node, batch: list[Event]) -> None:
    body = json_format.MessageToDict(as_request(batch), preserving_proto_field_name=True)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(
            f"http://127.0.0.1:{node.rest_port}/v0/analytics", json=body, headers=headers
        ) as answer,
    ):
        if answer.status != 204:
            raise ConnectionError(f"{node.name}: {answer.status} {await answer.text()}")


async def send_spread(nodes: list[Node], batches: list[list[Event]]) -> None:
    """Batch ``i`` to ``nodes[i % n]``, by REST and gRPC in turn, all at once."""
    sends = [
        (send_rest if (i // len(nodes)) % 2 else send_grpc)(nodes[i % len(nodes)], batch)
        for i, batch in enumerate(batches)
    ]
    await asyncio.gather(*sends)


async def create_goal(node: Node, namespace: str, goal: str) -> None:
    async with grpc.aio.insecure_channel(node.target) as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        request = pb.CreateGoalRequest(namespace=namespace, goal_name=goal)
        await stub.CreateGoal(request, metadata=AUTH, timeout=CALL_TIMEOUT)


async def begin_namespace(cluster: Cluster, namespace: str, via: Node) -> None:
    """The goals created on the single node and, through ``via``, on the cluster."""
    cluster.namespaces.append(namespace)
    for goal in (GOAL, SOMETIMES_GOAL):
        await create_goal(cluster.single, namespace, goal)
        await create_goal(via, namespace, goal)


# -- the answers --------------------------------------------------------------------------


def as_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


async def answers(node: Node, namespaces: list[str]) -> dict:
    """Everything a client may ask about ``namespaces``, as plain data."""
    async with grpc.aio.insecure_channel(node.target) as channel:
        stub = pb_grpc.KimballServiceStub(channel)

        async def ask(method: str, request) -> dict:
            return as_dict(
                await getattr(stub, method)(request, metadata=AUTH, timeout=CALL_TIMEOUT)
            )

        out: dict = {"namespaces": await ask("ListNamespaces", pb.ListNamespacesRequest())}
        for ns in namespaces:
            users = [f"{ns}-user-{u}" for u in (0, 1, 7, 30)]
            out[ns] = {
                "analytics": await ask("GetAnalytics", pb.GetAnalyticsRequest(namespace=ns)),
                "goals": await ask("ListGoals", pb.ListGoalsRequest(namespace=ns)),
                "predictions": await ask("GetPredictions", pb.GetPredictionsRequest(namespace=ns)),
                "for events": await ask(
                    "GetPredictions",
                    pb.GetPredictionsRequest(namespace=ns, events=["view", "cart"]),
                ),
                "for users": {
                    user: await ask(
                        "GetPredictions", pb.GetPredictionsRequest(namespace=ns, user_id=user)
                    )
                    for user in users
                },
                "nudges": {
                    user: await ask(
                        "GetNudges", pb.GetNudgesRequest(namespace=ns, goal=GOAL, user_id=user)
                    )
                    for user in users
                },
            }
        return out


async def cluster_answers(node: Node, namespaces: list[str]) -> dict | str:
    """A replica's answers, or while it cannot answer (partitions without an owner or not
    caught up yet) why not."""
    try:
        return await answers(node, namespaces)
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return f"{error.code().name}: {error.details()}"
        raise


async def assert_equal_answers(cluster: Cluster, timeout: float = SETTLE_SECONDS) -> None:
    """Every running replica answers as the single node does, within ``timeout`` seconds
    (events still being applied, partitions still moving)."""
    want = await answers(cluster.single, cluster.namespaces)
    last: dict[str, dict | str] = {}

    async def all_equal() -> bool:
        for node in cluster.running():
            last[node.name] = await cluster_answers(node, cluster.namespaces)
        return all(got == want for got in last.values())

    try:
        await until(all_equal, "every replica answering as the single node", timeout, 0.5)
    except AssertionError:
        for name, got in last.items():
            assert got == want, (
                f"{name} answers differently: {differences(got, want)[:5]}\n"
                f"its log ends: {''.join(cluster.log_of(name)[-30:])}"
            )
        raise


def differences(got: object, want: object, path: str = "") -> list[str]:
    """Where ``got`` differs from ``want`` (paths into the answers), for the failure message."""
    if isinstance(got, dict) and isinstance(want, dict):
        return [
            line
            for key in sorted(got.keys() | want.keys(), key=str)
            for line in differences(got.get(key), want.get(key), f"{path}/{key}")
        ]
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        return [
            line
            for i, (a, b) in enumerate(zip(got, want, strict=True))
            for line in differences(a, b, f"{path}[{i}]")
        ]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


# -- the tests ----------------------------------------------------------------------------


async def test_events_spread_over_the_replicas_give_the_single_nodes_answers(cluster):
    replicas = cluster.running()
    await begin_namespace(cluster, "equal", replicas[1])
    batches = user_batches("equal", 120, seed=1)
    await send_spread(replicas, batches)
    await send_spread([cluster.single], batches)
    await assert_equal_answers(cluster)


async def test_kimball_tail_on_a_replica_reads_back_then_follows_every_replicas_events(cluster):
    replicas = cluster.running()
    before = [Event("view", "tail-user-0", "tail", None, None, False),
              Event("cart", "tail-user-1", "tail", None, None, False)]  # fmt: skip
    live = [Event("buy", "tail-user-0", "tail", None, None, False)]
    await send_grpc(replicas[1], before)
    environ = {**os.environ, "KIMBALL_TARGET": replicas[0].target, "KIMBALL_TOKEN": TOKEN}
    tail = subprocess.Popen(
        [*KIMBALL, "tail", "--namespace", "tail", "--after-sequence", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
    )
    assert tail.stdout is not None
    try:
        lines = [await wait_for_line(tail) for _ in before]
        assert [(x["event"]["event_name"], x["replayed"]) for x in lines] == [
            ("view", True),
            ("cart", True),
        ]
        await send_grpc(replicas[2], live)
        followed = await wait_for_line(tail)
        assert (followed["event"]["event_name"], followed["replayed"]) == ("buy", False)
        assert followed["sequence"] > lines[1]["sequence"]
    finally:
        tail.send_signal(signal.SIGINT)
        tail.wait(timeout=CALL_TIMEOUT)
    for batch in (before, live):  # the namespaces stay the single node's
        await send_grpc(cluster.single, batch)


async def wait_for_line(process: subprocess.Popen) -> dict:
    """The next line ``process`` prints, as JSON (within ``CALL_TIMEOUT``)."""
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), CALL_TIMEOUT)
    assert line, process.stderr.read().decode() if process.stderr else "ended"
    return json.loads(line)


async def test_a_flag_put_on_one_replica_evaluates_alike_on_every_replica(cluster):
    spec = pb.FeatureSpec(name="new-checkout", rollout_percentage=50)
    for node in (cluster.replica(2), cluster.single):
        async with grpc.aio.insecure_channel(node.target) as channel:
            await pb_grpc.KimballServiceStub(channel).PutFeatureSpec(
                pb.PutFeatureSpecRequest(spec=spec), metadata=AUTH, timeout=CALL_TIMEOUT
            )
    users = [
        json_format.ParseDict({"user_id": f"flag-user-{i}"}, struct_pb2.Struct()) for i in range(8)
    ]

    async def flags(node: Node) -> list[dict]:
        async with grpc.aio.insecure_channel(node.target) as channel:
            stub = pb_grpc.KimballServiceStub(channel)
            return [
                as_dict(
                    await stub.EvaluateFeatures(
                        pb.EvaluateFeaturesRequest(user=user), metadata=AUTH, timeout=CALL_TIMEOUT
                    )
                )
                for user in users
            ]

    want = await flags(cluster.single)
    assert {True, False} <= {f["features"].get("new-checkout", False) for f in want}

    last: dict[str, list[dict]] = {}

    async def alike() -> bool:
        for node in cluster.running():
            last[node.name] = await flags(node)
        return all(got == want for got in last.values())

    try:
        await until(alike, "every replica evaluating the flag as the single node", 20, 0.2)
    except AssertionError:
        assert last == dict.fromkeys(last, want)
        raise


@dataclass
class Ingest:
    """Batches sent to the replicas until acknowledged, each retried on another replica
    after a failure (at least once, as a client does: applying an event twice counts its
    user once)."""

    batches: list[list[Event]]
    acknowledged: int = 0
    failures: int = 0

    async def run(self, cluster: Cluster) -> None:
        for i, batch in enumerate(self.batches):
            for attempt in range(50):
                nodes = cluster.running()
                node = nodes[(i + attempt) % len(nodes)]
                send = send_rest if i % 2 else send_grpc
                try:
                    await send(node, batch)
                except (grpc.aio.AioRpcError, aiohttp.ClientError, ConnectionError, OSError):
                    self.failures += 1
                    await asyncio.sleep(0.1)
                    continue
                self.acknowledged += 1
                break
            else:
                raise AssertionError(f"batch {i} never acknowledged")


async def test_killing_a_nats_node_and_a_replica_during_ingest_loses_no_acknowledged_event(
    cluster,
):
    await begin_namespace(cluster, "crash", cluster.replica(0))
    batches = user_batches("crash", 400, seed=2, per_batch=4)
    ingest = Ingest(batches)
    running = asyncio.ensure_future(ingest.run(cluster))
    try:
        await until(lambda: ingest.acknowledged >= 20, "some batches acknowledged", 30)
        await asyncio.to_thread(cluster.nats.kill, 1)
        cluster.replica(2).kill()
        assert not running.done(), "the kills must land during ingest: send more batches"
        await until(lambda: ingest.acknowledged >= 60, "ingest going on after the kills", 60)
        # The replica first, on the two NATS servers left: a replica starting while a
        # NATS server rejoins may see JetStream time out as the streams elect leaders.
        await asyncio.to_thread(cluster.replica(2).start)
        await asyncio.to_thread(cluster.nats.restart, 1)
    finally:
        await running
    await send_spread([cluster.single], batches)
    await assert_equal_answers(cluster)


async def test_a_fourth_replica_joining_moves_partitions_and_the_answers_stay_equal(cluster):
    await begin_namespace(cluster, "join", cluster.replica(0))
    batches = user_batches("join", 80, seed=3)
    await send_spread(cluster.running(), batches)
    fourth = cluster.replica(3)
    await asyncio.to_thread(fourth.start)
    try:
        more = user_batches("join", 80, seed=4)  # the same users again, and new events
        await send_spread(cluster.running(), more)
        await send_spread([cluster.single], batches)  # a user's events in the same order
        await send_spread([cluster.single], more)
        await assert_equal_answers(cluster)
    finally:
        await asyncio.to_thread(fourth.stop)


async def test_a_replica_paused_past_its_lease_is_taken_over_and_applies_nothing_stale(cluster):
    paused = cluster.replica(1)
    await begin_namespace(cluster, "pause", cluster.replica(0))
    batches = user_batches("pause", 80, seed=5)
    paused.signal(signal.SIGSTOP)
    try:
        others = [r for r in cluster.running() if r is not paused]
        await send_spread(others, batches)
        await send_spread([cluster.single], batches)
        want = await answers(cluster.single, cluster.namespaces)
        await until(
            lambda: all_answer(others, cluster.namespaces, want),
            "the other replicas answering for its partitions",
            SETTLE_SECONDS,
            0.5,
        )
    finally:
        paused.signal(signal.SIGCONT)
    # Awake, it finds its lease lapsed by its own clock and stops applying before anything
    # else (then joins again under a new incarnation and claims its share afresh).
    assert paused.process is not None
    await asyncio.to_thread(
        wait_for_output, paused.process, f"lease of {paused.name} lost", SETTLE_SECONDS
    )
    await assert_equal_answers(cluster)


async def all_answer(nodes: list[Node], namespaces: list[str], want: dict) -> bool:
    return all([await cluster_answers(node, namespaces) == want for node in nodes])
