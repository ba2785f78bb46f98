"""The services of a sidecar (``FEATURES_MODE=sidecar``): the same API as the api server.

Events go into the local spool and are acknowledged once there; the relay sender
delivers them. Feature flags are answered from the local copy of the specs.
Everything else (analytics, goals, predictions, nudges, subscriptions, spec
changes) is forwarded to the api server and answered with its response (paged reads
as asked: their page tokens are the api server's).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import grpc

from kimball_grpc.api.servicers import (
    accept_integration_stream,
    accept_stream,
    evaluate_features,
    feature_specs_response,
)
from kimball_grpc.codec import proto_mapping
from kimball_grpc.core.errors import KimballError
from kimball_grpc.core.steps import between_requests
from kimball_grpc.generated import features_proto_pb2 as integration_pb
from kimball_grpc.generated import features_proto_pb2_grpc as integration_grpc
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.outbound.api_server_client import ApiServerClient
from kimball_grpc.sidecar.spec_copy import SpecCopy
from kimball_grpc.sidecar.spec_file import SpecFile
from kimball_grpc.sidecar.spool import Spool

Context = grpc.aio.ServicerContext


class SidecarService(pb_grpc.KimballServiceServicer):
    """``kimball.v1.KimballService`` on a sidecar."""

    def __init__(
        self,
        spool: Spool,
        api: ApiServerClient,
        specs: SpecCopy | SpecFile,
        usage_lost: Callable[[KimballError], None],
        max_response_bytes: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.spool = spool
        self.api = api
        self.specs = specs
        self.usage_lost = usage_lost  # a feature usage that could not be spooled
        self.max_response_bytes = max_response_bytes  # for the specs, answered here
        self.clock = clock
        self.draw = draw

    async def TrackEvent(self, request: pb.TrackEventRequest, context: Context):
        await self.spool.accept(proto_mapping.event_fields([request.event]))
        return pb.TrackEventResponse()

    async def TrackEvents(self, request: pb.TrackEventsRequest, context: Context):
        events = proto_mapping.request_event_fields(request)
        return pb.TrackEventsResponse(accepted=await self.spool.accept(events))

    async def StreamEvents(
        self, request_iterator: AsyncIterator[pb.TrackEventsRequest], context: Context
    ):
        return await accept_stream(request_iterator, self.spool.accept)

    async def GetAnalytics(self, request: pb.GetAnalyticsRequest, context: Context):
        return await self.api.call(self.api.service.GetAnalytics, request, context)

    async def CreateGoal(self, request: pb.CreateGoalRequest, context: Context):
        return await self.api.call(self.api.service.CreateGoal, request, context)

    async def ListGoals(self, request: pb.ListGoalsRequest, context: Context):
        return await self.api.call(self.api.service.ListGoals, request, context)

    async def ListNamespaces(self, request: pb.ListNamespacesRequest, context: Context):
        return await self.api.call(self.api.service.ListNamespaces, request, context)

    async def GetPredictions(self, request: pb.GetPredictionsRequest, context: Context):
        return await self.api.call(self.api.service.GetPredictions, request, context)

    async def GetNudges(self, request: pb.GetNudgesRequest, context: Context):
        return await self.api.call(self.api.service.GetNudges, request, context)

    async def Subscribe(self, request: pb.SubscribeRequest, context: Context):
        async for response in self.api.stream(self.api.service.Subscribe, request, context):
            yield response

    # Feature flags: read and evaluated from the local copy (also while the api server is
    # down); changes go to the api server, and come back through the copy's watch.

    async def PutFeatureSpec(self, request: pb.PutFeatureSpecRequest, context: Context):
        return await self.api.call(self.api.service.PutFeatureSpec, request, context)

    async def GetFeatureSpec(self, request: pb.GetFeatureSpecRequest, context: Context):
        return proto_mapping.spec_to_proto(self.specs.flags.get(request.name))

    async def ListFeatureSpecs(self, request: pb.ListFeatureSpecsRequest, context: Context):
        return await between_requests(
            feature_specs_response(self.specs.flags, request, self.max_response_bytes)
        )

    async def DeleteFeatureSpec(self, request: pb.DeleteFeatureSpecRequest, context: Context):
        return await self.api.call(self.api.service.DeleteFeatureSpec, request, context)

    async def GetFeatureSpecHistory(
        self, request: pb.GetFeatureSpecHistoryRequest, context: Context
    ):
        return await self.api.call(self.api.service.GetFeatureSpecHistory, request, context)

    async def EvaluateFeatures(self, request: pb.EvaluateFeaturesRequest, context: Context):
        return await evaluate_features(
            request, self.specs.flags, self.spool.accept, self.usage_lost, self.clock(), self.draw
        )

    async def WatchFeatureSpecs(self, request: pb.WatchFeatureSpecsRequest, context: Context):
        async for response in self.api.stream(self.api.service.WatchFeatureSpecs, request, context):
            yield response


class SidecarIntegration(integration_grpc.KimballIntegrationServicer):
    """The original integration contract on a sidecar: events spooled, predictions forwarded."""

    def __init__(self, spool: Spool, api: ApiServerClient) -> None:
        self.spool = spool
        self.api = api

    async def EventStream(
        self, request_iterator: AsyncIterator[integration_pb.KimballEvent], context: Context
    ):
        return await accept_integration_stream(request_iterator, self.spool.accept)

    async def Prediction(self, request: integration_pb.PredictionRequest, context: Context):
        return await self.api.call(self.api.integration.Prediction, request, context)
