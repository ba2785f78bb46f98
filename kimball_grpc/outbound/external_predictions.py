"""External prediction targets: ask each one, merge the answers into predictions.

Every configured target ``(name, host, port)`` serves ``KimballIntegration.Prediction``.
For one predictions request, all targets are called at the same time, each on a channel
opened once and reused, with one deadline (default 200 ms). An answer
``(prediction_name, yes, no)`` from target ``T`` becomes ``T_yes`` and ``T_no`` under
``goals[prediction_name]``. A target that fails or is too slow is skipped and reported,
answers that cannot be shown (NaN, infinity, a bad name) are dropped and reported: the
request itself never fails because of a target.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from kimball_grpc.config.settings import PredictionTarget
from kimball_grpc.core.errors import ConfigError, InvalidArgument
from kimball_grpc.core.names import check_name
from kimball_grpc.generated import features_proto_pb2 as integration_pb
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.outbound.channels import QUICK_RECONNECT, insecure_channel, target_address

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_SECONDS = 0.2

# Results counted in kimball_external_prediction_requests_total{result}.
RESULT_OK = "ok"
RESULT_DEADLINE = "deadline"
RESULT_ERROR = "error"

# A target's error text ends up in our response: keep it short.
_MAX_REASON_CHARS = 200

# gRPC's default reconnect backoff grows to 120 s, and while a channel waits to reconnect
# every call fails at once: a target that restarted would stay skipped for up to two
# minutes. Capping the backoff at 5 s brings it back within seconds; a dead target then
# costs one connection attempt per 5 s, nothing per request.

# Latencies around the deadline matter most: buckets from 5 ms to a few seconds.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5)

ChannelFactory = Callable[[str], grpc.aio.Channel]
"""Opens a channel to ``"host:port"``; the default is an insecure ``grpc.aio`` channel."""


@dataclass(frozen=True)
class ExternalAnswer:
    """One target's answer for one prediction name."""

    target: str
    yes: float
    no: float


@dataclass(frozen=True)
class TargetIssue:
    """Why a target, or one of its answers, is missing from the merged answers."""

    target: str
    reason: str


@dataclass(frozen=True)
class ExternalAnswers:
    """The targets' answers for one request.

    ``per_goal`` maps a prediction name to the answers for it, in the configured order of
    the targets (whatever order they answered in). ``skipped`` lists the targets that gave
    nothing (deadline, error), ``dropped`` the single answers left out (not finite, bad
    name, repeated name: a target's first valid answer for a name is kept).
    """

    per_goal: Mapping[str, tuple[ExternalAnswer, ...]] = field(default_factory=dict)
    skipped: tuple[TargetIssue, ...] = ()
    dropped: tuple[TargetIssue, ...] = ()

    @property
    def issues(self) -> tuple[TargetIssue, ...]:
        """Everything to report: skipped targets, then dropped answers."""
        return self.skipped + self.dropped

    def fields(self, prediction_name: str) -> dict[str, float]:
        """``{"T_yes": yes, "T_no": no}`` for every target ``T`` that answered the name."""
        out: dict[str, float] = {}
        for answer in self.per_goal.get(prediction_name, ()):
            out[f"{answer.target}_yes"] = answer.yes
            out[f"{answer.target}_no"] = answer.no
        return out

    def merged(self) -> dict[str, dict[str, float]]:
        """``fields`` for every prediction name: what REST predictions add under ``goals``."""
        return {name: self.fields(name) for name in self.per_goal}

    def merge_into(self, response: pb.GetPredictionsResponse) -> None:
        """Add the answers to ``response.goals`` as ``external`` entries, creating the goals
        Kimball itself has no figures for (every answer is added under its name), and
        the targets skipped or with answers dropped to ``external_problems``."""
        for name, answers in self.per_goal.items():
            goal = response.goals[name]
            goal.external.extend(
                pb.ExternalPrediction(target=a.target, yes=a.yes, no=a.no) for a in answers
            )
        response.external_problems.extend(
            pb.ExternalTargetProblem(target=i.target, reason=i.reason) for i in self.issues
        )


NO_ANSWERS = ExternalAnswers()


class ExternalPredictions:
    """Calls the external prediction targets concurrently, on channels reused across calls.

    ``registry`` receives ``kimball_external_prediction_requests_total{target, result}``
    (``result``: ok, deadline, error), ``kimball_external_prediction_duration_seconds
    {target}`` and ``kimball_external_prediction_dropped_answers_total{target}``; create one
    instance per registry. Channels open on first use, so construction does no I/O and
    needs no running event loop; ``close`` closes them.
    """

    def __init__(
        self,
        targets: Iterable[PredictionTarget],
        registry: CollectorRegistry,
        *,
        deadline: float = DEFAULT_DEADLINE_SECONDS,
        channel_factory: ChannelFactory | None = None,
    ) -> None:
        self._targets = tuple(targets)
        if not (math.isfinite(deadline) and deadline > 0):
            raise ConfigError(f"external prediction deadline must be > 0 seconds, got {deadline}")
        names = [t.name for t in self._targets]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            # Two targets of one name would write the same NAME_yes and NAME_no keys.
            raise ConfigError(
                f"external_grpc_prediction_targets: repeated target name(s) {', '.join(repeated)}"
            )
        self._deadline = deadline
        self._deadline_text = f"{round(deadline * 1000, 3):g} ms"
        self._channel_factory = channel_factory or _target_channel
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, integration_grpc.KimballIntegrationStub] = {}
        self._failing: set[str] = set()  # targets whose last call failed: log changes only
        self._closed = False
        self._requests = Counter(
            "kimball_external_prediction_requests",
            "Prediction calls to external targets, by target and result (ok, deadline, error).",
            ["target", "result"],
            registry=registry,
        )
        self._seconds = Histogram(
            "kimball_external_prediction_duration_seconds",
            "Time for an external prediction target to answer or fail, by target.",
            ["target"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self._dropped = Counter(
            "kimball_external_prediction_dropped_answers",
            "Answers from external targets left out (not finite, bad or repeated name).",
            ["target"],
            registry=registry,
        )
        # Every series exists from the start at 0, so rates and alerts work before a failure.
        for target in self._targets:
            for result in (RESULT_OK, RESULT_DEADLINE, RESULT_ERROR):
                self._requests.labels(target.name, result)
            self._seconds.labels(target.name)
            self._dropped.labels(target.name)

    @property
    def targets(self) -> tuple[PredictionTarget, ...]:
        """The configured targets, in order."""
        return self._targets

    @property
    def deadline(self) -> float:
        """The deadline of each call, in seconds."""
        return self._deadline

    async def ask(
        self, namespace: str, user_id: str, event_names: Sequence[str]
    ) -> ExternalAnswers:
        """Ask every target at once and merge their answers; never raises for a target.

        Each target gets ``PredictionRequest{namespace, user_id, event_names}``:
        ``event_names`` are the events the prediction is for (those the caller named, or
        for a request by user the events that user did). Returns within about the deadline
        however the targets behave. With no target configured it returns at once, without
        any I/O.
        """
        if not self._targets:
            return NO_ANSWERS
        if self._closed:  # a request still running while the server stops
            return ExternalAnswers(
                skipped=tuple(TargetIssue(t.name, "closed: shutting down") for t in self._targets)
            )
        request = integration_pb.PredictionRequest(
            namespace=namespace, user_id=user_id, event_names=list(event_names)
        )
        # Each call catches its own failures, so gather never raises for a target; if the
        # caller is cancelled, gather cancels the calls still running.
        results = await asyncio.gather(*(self._call(t, request) for t in self._targets))
        per_goal: dict[str, list[ExternalAnswer]] = {}
        skipped: list[TargetIssue] = []
        dropped: list[TargetIssue] = []
        for target, outcome in zip(self._targets, results, strict=True):
            if isinstance(outcome, TargetIssue):
                skipped.append(outcome)
                continue
            seen: set[str] = set()
            for prediction in outcome.predictions:
                checked = _validate(target.name, prediction, seen)
                if isinstance(checked, str):
                    dropped.append(TargetIssue(target.name, checked))
                    self._dropped.labels(target.name).inc()
                else:
                    per_goal.setdefault(prediction.prediction_name, []).append(checked)
        return ExternalAnswers(
            per_goal={name: tuple(answers) for name, answers in per_goal.items()},
            skipped=tuple(skipped),
            dropped=tuple(dropped),
        )

    async def close(self) -> None:
        """Close every channel; later ``ask`` calls report the targets as skipped."""
        self._closed = True
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs.clear()
        await asyncio.gather(*(channel.close() for channel in channels))

    async def __aenter__(self) -> ExternalPredictions:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _stub(self, target: PredictionTarget) -> integration_grpc.KimballIntegrationStub:
        stub = self._stubs.get(target.name)
        if stub is None:
            if self._closed:  # closed while this call was being scheduled: open nothing new
                raise RuntimeError("closed: shutting down")
            channel = self._channel_factory(target_address(target.host, target.port))
            self._channels[target.name] = channel
            stub = self._stubs[target.name] = integration_grpc.KimballIntegrationStub(channel)
        return stub

    async def _call(
        self, target: PredictionTarget, request: integration_pb.PredictionRequest
    ) -> integration_pb.PredictionResponse | TargetIssue:
        """One target's response, or why there is none."""
        started = time.perf_counter()
        try:
            # gRPC's deadline covers connecting too, and reaches the target, which can
            # stop working on an answer nobody waits for any more.
            response = await self._stub(target).Prediction(request, timeout=self._deadline)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                result, reason = RESULT_DEADLINE, f"deadline exceeded after {self._deadline_text}"
            else:
                result = RESULT_ERROR
                reason = f"{exc.code().name.lower()}: {exc.details() or 'no details'}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken target must never fail the caller's request
            result, reason = RESULT_ERROR, f"{type(exc).__name__}: {exc}"
        else:
            result, reason = RESULT_OK, ""
        self._seconds.labels(target.name).observe(time.perf_counter() - started)
        self._requests.labels(target.name, result).inc()
        if result == RESULT_OK:
            if target.name in self._failing:
                self._failing.discard(target.name)
                log.info("external prediction target %s answers again", target.name)
            return response
        reason = _shorten(reason)
        if target.name not in self._failing:
            self._failing.add(target.name)
            log.warning(
                "external prediction target %s (%s) skipped: %s",
                target.name,
                target_address(target.host, target.port),
                reason,
            )
        return TargetIssue(target.name, reason)


def _validate(
    target: str, prediction: integration_pb.Prediction, seen: set[str]
) -> ExternalAnswer | str:
    """The answer to keep, or why it is dropped. ``seen``: names this target gave already."""
    name = prediction.prediction_name
    try:
        check_name("prediction_name", name)
    except InvalidArgument as exc:
        return f"answer {name[:64]!r} dropped: {exc.message}"
    for label in ("yes", "no"):
        value = getattr(prediction, label)
        if not math.isfinite(value):
            # JSON has no NaN or infinity: passing it on would break the REST answer.
            return f"answer {name[:64]!r} dropped: {label} is {value}, not a finite number"
    if name in seen:
        return f"answer {name[:64]!r} dropped: repeated, the first one is kept"
    seen.add(name)
    return ExternalAnswer(
        target, _shortest_float32(prediction.yes), _shortest_float32(prediction.no)
    )


def _shortest_float32(value: float) -> float:
    """The shortest decimal that is the same 32-bit float as ``value``.

    ``yes`` and ``no`` travel as 32-bit floats: a target's 0.1 arrives as
    0.10000000149011612. Shown as a double that is noise; this gives back 0.1.
    """
    for digits in range(1, 10):  # 9 significant digits always identify a float32
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.unpack("f", struct.pack("f", candidate))[0] == value:
                return candidate
        except OverflowError:  # rounded above the largest float32: try more digits
            continue
    return value


def _shorten(reason: str) -> str:
    reason = " ".join(reason.split())  # gRPC error texts span lines
    if len(reason) <= _MAX_REASON_CHARS:
        return reason
    return reason[: _MAX_REASON_CHARS - 3] + "..."


def _target_channel(address: str) -> grpc.aio.Channel:
    return insecure_channel(address, QUICK_RECONNECT)
