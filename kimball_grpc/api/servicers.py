"""gRPC servicers: convert the request, call the core, build the response.

Errors are raised as domain exceptions and turned into gRPC statuses by the
server's interceptor (``status_mapping``), so no handler catches anything.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableSequence, Sequence
from datetime import UTC, datetime

import grpc

from kimball_grpc.api.auth import caller_token_id
from kimball_grpc.api.ingest import Ingestor
from kimball_grpc.codec import proto_mapping
from kimball_grpc.core.counters import counter_key
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import (
    InvalidArgument,
    KimballError,
    LimitExceeded,
    OutOfRange,
    ShuttingDown,
)
from kimball_grpc.core.events import AcceptedEvent, Event, EventFields
from kimball_grpc.core.feature_flags import FeatureFlags, SpecChange, feature_usage
from kimball_grpc.core.limits import (
    MAX_EVENTS_PER_SUBSCRIBE_RESPONSE,
    MAX_SUBSCRIPTION_EVENT_NAMES,
)
from kimball_grpc.core.merged_counts import MergedCounts, check_prediction_request
from kimball_grpc.core.names import check_name, check_namespace
from kimball_grpc.core.paging import (
    PageRequest,
    itself,
    name_key,
    named_after,
    page,
    page_request,
)
from kimball_grpc.core.predictions import NaiveBayes
from kimball_grpc.core.steps import Steps, between_requests
from kimball_grpc.generated import features_proto_pb2 as integration_pb
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.generated.kimball.v1 import relay_pb2 as relay_pb
from kimball_grpc.generated.kimball.v1 import relay_pb2_grpc as relay_grpc
from kimball_grpc.outbound.cluster_fanout import ClusterFanOut
from kimball_grpc.outbound.external_predictions import ExternalPredictions
from kimball_grpc.streaming.subscriptions import EventFilter, SubscriptionHub

Context = grpc.aio.ServicerContext
# StreamEvents: messages of a stream accepted beyond the one being made durable (two: the
# next group of the log forms while the disk syncs the last; 10% more than one, measured).
STREAM_AHEAD = 2


Accept = Callable[[Sequence[EventFields]], Awaitable[int]]


async def accept_stream(
    requests: AsyncIterator[pb.TrackEventsRequest], accept: Accept, ahead: int = 0
) -> pb.StreamEventsResponse:
    """``StreamEvents``: each message's events accepted as it arrives; a bad message, or one
    past a limit, ends the call naming its index, and nothing after it is accepted.

    With ``ahead``, up to that many messages are accepted further while the first one
    not yet answered is being made durable (the wait for the disk would otherwise leave
    the server idle between a stream's messages): ``accept`` must then do what has to
    happen in order before it returns (``Ingestor.submit``)."""
    accepted = 0
    messages = 0  # answered
    in_flight: deque[asyncio.Future[int]] = deque()  # oldest first, each until it ended

    def named(exc: InvalidArgument | LimitExceeded) -> KimballError:
        return type(exc)(
            f"message {messages}: {exc.message} ({accepted} events accepted before it)",
            message=str(messages),
            **exc.details,
        )

    async def settle(most: int) -> None:
        nonlocal accepted, messages
        while len(in_flight) > most:
            oldest = in_flight[0]
            try:
                # Shielded: a cancel of this call must not cut a batch short in the log.
                accepted += await asyncio.shield(oldest)
            except (InvalidArgument, LimitExceeded) as exc:
                raise named(exc) from None
            finally:
                if oldest.done():
                    in_flight.popleft()
            messages += 1

    try:
        async for request in requests:
            try:
                events = proto_mapping.request_event_fields(request)
                in_flight.append(asyncio.ensure_future(accept(events)))
            except (InvalidArgument, LimitExceeded) as exc:
                await settle(0)  # the messages before it, whose count the error gives
                raise named(exc) from None
            await settle(ahead)
        await settle(0)
    except ShuttingDown as exc:  # between two messages: the answer will not come, so say it
        await settle(0)
        raise ShuttingDown(
            f"{exc.message}; the first {messages} messages of this stream ({accepted} events) "
            f"were accepted",
            messages=str(messages),
            accepted=str(accepted),
        ) from None
    finally:
        # Ended early (an error, or this call cancelled): the messages submitted go on to
        # the log all the same, and their end is waited for; what they raise is dropped,
        # the call ending with its own error.
        if in_flight:
            ended, _ = await asyncio.wait(in_flight)
            for task in ended:
                if not task.cancelled():
                    task.exception()
    return pb.StreamEventsResponse(accepted=accepted, messages=messages)


async def accept_integration_stream(
    messages: AsyncIterator[integration_pb.KimballEvent], accept: Accept
) -> integration_pb.Response:
    """The original contract's ``EventStream``: one event per message, accepted as it comes."""
    accepted = 0
    async for message in messages:
        event = Event(event_name=message.name, user_id=message.key, namespace=message.namespace)
        try:
            accepted += await accept([event])
        except (InvalidArgument, LimitExceeded) as exc:
            raise type(exc)(
                f"event {accepted}: {exc.message}", index=str(accepted), **exc.details
            ) from None
    return integration_pb.Response(code=0)


# The paged reads: request to response, each built in one function (a sidecar answers
# ListFeatureSpecs from its copy of the specs with the same one).


def analytics_response(
    engine: Engine | MergedCounts, request: pb.GetAnalyticsRequest, max_bytes: int
) -> Steps[pb.GetAnalyticsResponse]:
    """``GetAnalytics``: the namespace's counters, of events with ``name_prefix`` if given,
    whole or the page asked for, within ``max_bytes`` (from one node's engine or a
    cluster's merged counts)."""
    namespace = check_namespace(request.namespace)
    prefix = check_name("name_prefix", request.name_prefix, required=False)
    paging = page_request(
        ("GetAnalytics", namespace, prefix), request.page_size, request.page_token
    )
    goals = engine.goal_set(namespace)
    response = pb.GetAnalyticsResponse()
    response.next_page_token = yield from page(
        engine.counters_after(namespace, prefix, paging.after),
        counter_key,
        paging,
        response.counts,
        lambda out, counter: proto_mapping.add_counter(out, counter, goals),
        max_bytes,
    )
    return response


def goals_response(
    engine: Engine | MergedCounts, request: pb.ListGoalsRequest, max_bytes: int
) -> Steps[pb.ListGoalsResponse]:
    """``ListGoals``: the namespace's goals by name, whole or the page asked for."""
    namespace = check_namespace(request.namespace)
    paging = page_request(("ListGoals", namespace), request.page_size, request.page_token)
    response = pb.ListGoalsResponse()
    response.next_page_token = yield from _names_page(
        engine.goals(namespace), paging, response.goals, max_bytes
    )
    return response


def namespaces_response(
    namespaces: Sequence[str], request: pb.ListNamespacesRequest, max_bytes: int
) -> Steps[pb.ListNamespacesResponse]:
    """``ListNamespaces``: the ``namespaces`` (sorted), whole or the page asked for."""
    paging = page_request(("ListNamespaces",), request.page_size, request.page_token)
    response = pb.ListNamespacesResponse()
    response.next_page_token = yield from _names_page(
        namespaces, paging, response.namespaces, max_bytes
    )
    return response


def feature_specs_response(
    flags: FeatureFlags, request: pb.ListFeatureSpecsRequest, max_bytes: int
) -> Steps[pb.FeatureSpecs]:
    """``ListFeatureSpecs``: the specs by name, whole or the page asked for; the version
    and fingerprint are the whole set's."""
    paging = page_request(("ListFeatureSpecs",), request.page_size, request.page_token)
    whole = proto_mapping.flags_to_proto(flags)  # by name
    response = pb.FeatureSpecs(version=whole.version, fingerprint=whole.fingerprint)
    response.next_page_token = yield from page(
        named_after(whole.specs, _spec_name, paging.after),
        _spec_key,
        paging,
        response.specs,
        proto_mapping.add_item,
        max_bytes,
    )
    return response


def _names_page(
    names: Sequence[str], paging: PageRequest, out: MutableSequence[str], max_bytes: int
) -> Steps[str]:
    """A page of sorted ``names`` into ``out``; the next page's token."""
    return (
        yield from page(
            named_after(names, itself, paging.after),
            name_key,
            paging,
            out,
            proto_mapping.add_item,
            max_bytes,
        )
    )


def feature_spec_history_response(
    flags: FeatureFlags, request: pb.GetFeatureSpecHistoryRequest, max_bytes: int
) -> Steps[pb.FeatureSpecHistory]:
    """``GetFeatureSpecHistory``: the flag's changes, newest first, whole or the page asked
    for (a change made between two pages shifts the later pages by one)."""
    paging = page_request(
        ("GetFeatureSpecHistory", request.name), request.page_size, request.page_token
    )
    changes = flags.changes(request.name)
    start = 0
    if paging.after is not None:
        after = paging.after[0]
        if not (after.isascii() and after.isdigit() and len(after) < 10):  # hand-made
            raise InvalidArgument("page_token is not a page of this history", page_token="")
        start = int(after) + 1
    response = pb.FeatureSpecHistory()
    response.next_page_token = yield from page(
        ((i, changes[i]) for i in range(start, len(changes))),
        _change_key,
        paging,
        response.changes,
        _add_change,
        max_bytes,
    )
    return response


def _change_key(item: tuple[int, SpecChange]) -> tuple[str, ...]:
    return (str(item[0]),)


def _add_change(out: MutableSequence[pb.FeatureSpecChange], item: tuple[int, SpecChange]) -> int:
    return proto_mapping.add_item(out, proto_mapping.spec_change_to_proto(item[1]))


def _spec_name(spec: pb.FeatureSpec) -> str:
    return spec.name


def _spec_key(spec: pb.FeatureSpec) -> tuple[str, ...]:
    return name_key(spec.name)


async def evaluate_features(
    request: pb.EvaluateFeaturesRequest,
    flags: FeatureFlags,
    accept: Accept,
    usage_lost: Callable[[KimballError], None],
    now: datetime,
    draw: Callable[[], float],
) -> pb.EvaluateFeaturesResponse:
    """``EvaluateFeatures`` against ``flags``; a usage to count goes to ``accept``, and if it
    cannot be stored (a failing disk, a full spool, a limit) to ``usage_lost``: the flags are
    answered all the same."""
    user = proto_mapping.json_value(request.user, "user")
    context = proto_mapping.json_value(request.context, "context")
    namespace, feature, user_id = feature_usage(user, context)
    features, variants = flags.evaluate(user, now, draw, context)
    if feature:
        try:
            await accept([Event(feature, user_id, namespace)])
        except KimballError as exc:  # validated already: a limit or storage refused it
            usage_lost(exc)
    return pb.EvaluateFeaturesResponse(features=features, variants=variants)


async def cluster_predictions(
    cluster: ClusterFanOut, request: pb.GetPredictionsRequest
) -> tuple[pb.GetPredictionsResponse, list[str] | None]:
    """``GetPredictions`` from the merged counts of every partition of a cluster, and the
    user's events when asked by user (from the user's partition)."""
    namespace, events, user_id = request.namespace, list(request.events), request.user_id
    if not (user_id or events):
        merged = await cluster.merged_counts(namespace)
        return proto_mapping.event_predictions_to_proto(merged.event_predictions(namespace)), None
    answers, user_events = await cluster_predict(cluster, namespace, events, user_id)
    return proto_mapping.naive_bayes_to_proto(answers), user_events


async def cluster_predict(
    cluster: ClusterFanOut, namespace: str, events: list[str], user_id: str
) -> tuple[dict[str, NaiveBayes], list[str] | None]:
    """``Engine.predict`` from the merged counts of every partition of a cluster, and the
    user's events when asked by user (from the user's partition)."""
    check_prediction_request(events, user_id)  # before asking any replica
    if not user_id:
        merged = await cluster.merged_counts(namespace)
        return merged.predict_for_events(namespace, events), None
    merged, user_events = await asyncio.gather(
        cluster.merged_counts(namespace), cluster.user_events(namespace, user_id)
    )
    return merged.predict_for_user(namespace, user_id, user_events), user_events


async def cluster_nudges(
    cluster: ClusterFanOut, request: pb.GetNudgesRequest
) -> pb.GetNudgesResponse:
    """``GetNudges`` from the merged counts of every partition and the user's events."""
    goal = check_name("goal", request.goal)  # before asking any replica
    merged, user_events = await asyncio.gather(
        cluster.merged_counts(request.namespace),
        cluster.user_events(request.namespace, request.user_id),
    )
    nudges = merged.nudges(request.namespace, goal, user_events)
    return proto_mapping.nudges_to_proto(nudges, request.goal, request.user_id)


class KimballService(pb_grpc.KimballServiceServicer):
    """The versioned API, ``kimball.v1.KimballService``."""

    # Methods that yield their responses' bytes: register them without a serializer.
    SERIALIZED_RESPONSES = frozenset({"Subscribe"})

    def __init__(
        self,
        engine: Engine,
        ingestor: Ingestor,
        hub: SubscriptionHub,
        external: ExternalPredictions,
        usage_lost: Callable[[KimballError], None],
        max_response_bytes: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        draw: Callable[[], float] = random.random,
        cluster: ClusterFanOut | None = None,
    ) -> None:
        self.engine = engine
        # In cluster mode: the queries about counts go to every partition's owner, merged.
        self.cluster = cluster
        self.ingestor = ingestor
        self.hub = hub
        self.external = external
        self.max_response_bytes = max_response_bytes  # a whole answer's or a page's limit
        self.usage_lost = usage_lost  # a feature usage that could not be stored
        self.clock = clock
        self.draw = draw  # a user without user_id gets a random draw in a rollout

    async def TrackEvent(self, request: pb.TrackEventRequest, context: Context):
        await self.ingestor.accept(proto_mapping.event_fields([request.event]))
        return pb.TrackEventResponse()

    async def TrackEvents(self, request: pb.TrackEventsRequest, context: Context):
        accepted = await self.ingestor.accept(proto_mapping.request_event_fields(request))
        return pb.TrackEventsResponse(accepted=accepted)

    async def StreamEvents(
        self, request_iterator: AsyncIterator[pb.TrackEventsRequest], context: Context
    ):
        if self.cluster is not None:  # a batch may wait to register names: one at a time
            return await accept_stream(request_iterator, self.ingestor.accept)
        return await accept_stream(request_iterator, self.ingestor.submit, STREAM_AHEAD)

    async def GetAnalytics(self, request: pb.GetAnalyticsRequest, context: Context):
        return await between_requests(
            analytics_response(
                await self._counts(request.namespace), request, self.max_response_bytes
            )
        )

    async def _counts(self, namespace: str) -> Engine | MergedCounts:
        """Where the namespace's counts are: this node's engine, or every partition's."""
        if self.cluster is None:
            return self.engine
        return await self.cluster.merged_counts(namespace)

    async def CreateGoal(self, request: pb.CreateGoalRequest, context: Context):
        await self.ingestor.create_goal(request.namespace, request.goal_name)
        return pb.CreateGoalResponse()

    async def ListGoals(self, request: pb.ListGoalsRequest, context: Context):
        return await between_requests(
            goals_response(await self._counts(request.namespace), request, self.max_response_bytes)
        )

    async def ListNamespaces(self, request: pb.ListNamespacesRequest, context: Context):
        return await between_requests(
            namespaces_response(
                self.engine.namespaces()
                if self.cluster is None
                else await self.cluster.namespaces(),
                request,
                self.max_response_bytes,
            )
        )

    async def GetPredictions(self, request: pb.GetPredictionsRequest, context: Context):
        user_events: list[str] | None = None
        if self.cluster is not None:
            response, user_events = await cluster_predictions(self.cluster, request)
        elif request.user_id or request.events:
            answers = self.engine.predict(request.namespace, list(request.events), request.user_id)
            response = proto_mapping.naive_bayes_to_proto(answers)
        else:
            response = proto_mapping.event_predictions_to_proto(
                self.engine.event_predictions(request.namespace)
            )
        # After Kimball's own answer: a request it refuses costs no call to any target.
        event_names = list(request.events)
        if request.user_id and self.external.targets:
            # The user's own events, as the original sent them: models that predict from
            # events work for requests by user too.
            event_names = (
                user_events
                if user_events is not None
                else self.engine.events_for_user(request.namespace, request.user_id)
            )
        external = await self.external.ask(
            check_namespace(request.namespace), request.user_id, event_names
        )
        external.merge_into(response)
        return response

    async def GetNudges(self, request: pb.GetNudgesRequest, context: Context):
        if self.cluster is not None:
            return await cluster_nudges(self.cluster, request)
        nudges = self.engine.nudges(request.namespace, request.goal, request.user_id)
        return proto_mapping.nudges_to_proto(nudges, request.goal, request.user_id)

    async def Subscribe(self, request: pb.SubscribeRequest, context: Context):
        # Yields each response's bytes (SERIALIZED_RESPONSES): events encoded once go out
        # to every subscriber as they are.
        if len(request.event_names) > MAX_SUBSCRIPTION_EVENT_NAMES:
            raise InvalidArgument(
                f"at most {MAX_SUBSCRIPTION_EVENT_NAMES} event names", key="event_names"
            )
        if request.max_events_per_response > MAX_EVENTS_PER_SUBSCRIBE_RESPONSE:
            raise InvalidArgument(
                f"max_events_per_response is at most {MAX_EVENTS_PER_SUBSCRIBE_RESPONSE}, "
                f"not {request.max_events_per_response}",
                key="max_events_per_response",
            )
        limit = max(1, request.max_events_per_response)
        batched = request.max_events_per_response > 1
        event_filter = EventFilter(
            namespace=check_namespace(request.namespace) if request.namespace else "",
            event_names=frozenset(check_name("event_names", n) for n in request.event_names),
            event_name_prefix=check_name(
                "event_name_prefix", request.event_name_prefix, required=False
            ),
        )
        head = await self._open_events()
        try:
            if request.after_sequence > head:  # waiting would hide it: the position is unknown
                raise OutOfRange(
                    f"after_sequence {request.after_sequence} is past the last sequence "
                    f"number, {head}: resume from {head} or lower",
                    after_sequence=str(request.after_sequence),
                    last_sequence=str(head),
                )
            subscription = self.hub.subscribe(event_filter, after=request.after_sequence)
            # From here on every event reaches the ring; the log holds the earlier ones.
            live_from = self._live_from()
            wire = proto_mapping.subscribe_response_wire
            try:
                # Headers now, before any event: the caller learns the subscription is in
                # place (the REST gateway then answers 200 and streams).
                await context.send_initial_metadata(())
                if request.HasField("after_sequence") and request.after_sequence < live_from:
                    replayed: list[bytes] = []
                    async for accepted in self._replay(request.after_sequence, live_from):
                        if event_filter.matches(accepted.event):
                            replayed.append(proto_mapping.subscribe_entry(accepted, replayed=True))
                            if len(replayed) == limit:
                                yield wire(replayed, 0, batched)
                                replayed = []
                    if replayed:
                        yield wire(replayed, 0, batched)
                while True:
                    entries = await subscription.next(limit)
                    yield wire(entries, subscription.dropped, batched)
            finally:
                self.hub.unsubscribe(subscription)
        finally:
            self._close_events()

    async def _open_events(self) -> int:
        """Ready the events for a new subscriber; the highest sequence number it may resume
        after."""
        return self.ingestor.last_sequence

    def _close_events(self) -> None:
        """A subscriber opened by ``_open_events`` is gone."""

    def _live_from(self) -> int:
        """The sequence number after which the events reach the hub (just subscribed to):
        those up to it are read back by ``_replay``."""
        return self.ingestor.last_sequence

    def _replay(self, after: int, through: int) -> AsyncIterator[AcceptedEvent]:
        """The events numbered above ``after``, up to ``through``, read back from the log."""
        return self.ingestor.replay(after, through)

    async def PutFeatureSpec(self, request: pb.PutFeatureSpecRequest, context: Context):
        spec = proto_mapping.spec_from_proto(request.spec)
        await self.ingestor.put_feature_spec(spec, caller_token_id(context.invocation_metadata()))
        return proto_mapping.spec_to_proto(spec)

    async def GetFeatureSpec(self, request: pb.GetFeatureSpecRequest, context: Context):
        return proto_mapping.spec_to_proto(self.engine.flags.get(request.name))

    async def ListFeatureSpecs(self, request: pb.ListFeatureSpecsRequest, context: Context):
        return await between_requests(
            feature_specs_response(self.engine.flags, request, self.max_response_bytes)
        )

    async def DeleteFeatureSpec(self, request: pb.DeleteFeatureSpecRequest, context: Context):
        await self.ingestor.delete_feature_spec(
            request.name, caller_token_id(context.invocation_metadata())
        )
        return pb.DeleteFeatureSpecResponse()

    async def GetFeatureSpecHistory(
        self, request: pb.GetFeatureSpecHistoryRequest, context: Context
    ):
        return await between_requests(
            feature_spec_history_response(self.engine.flags, request, self.max_response_bytes)
        )

    async def EvaluateFeatures(self, request: pb.EvaluateFeaturesRequest, context: Context):
        return await evaluate_features(
            request,
            self.engine.flags,
            self.ingestor.accept,
            self.usage_lost,
            self.clock(),
            self.draw,
        )

    async def WatchFeatureSpecs(self, request: pb.WatchFeatureSpecsRequest, context: Context):
        changes = self.ingestor.spec_changes
        async for message in changes.watch(self.engine.flags, request.fingerprint):
            yield message


class KimballIntegration(integration_grpc.KimballIntegrationServicer):
    """The original integration contract, served: events in, predictions out."""

    def __init__(
        self, engine: Engine, ingestor: Ingestor, cluster: ClusterFanOut | None = None
    ) -> None:
        self.engine = engine
        self.ingestor = ingestor
        self.cluster = cluster  # in cluster mode: predictions from every partition's counts

    async def EventStream(
        self, request_iterator: AsyncIterator[integration_pb.KimballEvent], context: Context
    ):
        return await accept_integration_stream(request_iterator, self.ingestor.accept)

    async def Prediction(self, request: integration_pb.PredictionRequest, context: Context):
        events, user_id = list(request.event_names), request.user_id
        if self.cluster is None:
            answers = self.engine.predict(request.namespace, events, user_id)
        else:
            answers, _ = await cluster_predict(self.cluster, request.namespace, events, user_id)
        return integration_pb.PredictionResponse(
            predictions=[
                integration_pb.Prediction(prediction_name=goal, yes=a.yes, no=a.no)
                for goal, a in answers.items()
                if not a.note
            ]
        )


class KimballRelay(relay_grpc.KimballRelayServicer):
    """Events from sidecars: each message acknowledged once applied and durable (less what
    a limit refused, which is counted in the answer)."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    async def Relay(self, request_iterator: AsyncIterator[relay_pb.RelayRequest], context: Context):
        # At shutdown the stream ends between two messages (UNAVAILABLE); the sidecar sends
        # what was not acknowledged again to the next run.
        await context.send_initial_metadata(())  # the sidecar waits for it before writing
        async for request in request_iterator:
            refused = await self.ingestor.accept_relayed(request.batches)
            yield relay_pb.RelayResponse(
                acknowledged_through=request.last_sequence, refused_events=refused
            )
