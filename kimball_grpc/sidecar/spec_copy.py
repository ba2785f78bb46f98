"""A sidecar's copy of the feature specs, which it evaluates flags with.

Loaded from a file at start-up, so flags are answered while the api server is
down, also after a restart of the sidecar; refreshed from a ``WatchFeatureSpecs``
stream, and written back to the file at each change. A lost stream is opened
again after an exponential backoff with jitter.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from kimball_grpc.codec.proto_mapping import spec_from_proto
from kimball_grpc.core.errors import KimballError
from kimball_grpc.core.feature_flags import FeatureFlags
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.outbound.api_server_client import ApiServerClient
from kimball_grpc.outbound.background import BackgroundLoop
from kimball_grpc.outbound.backoff import Backoff
from storage.fsutil import atomic_write, tighten

log = logging.getLogger(__name__)


class SpecCopy(BackgroundLoop):
    """A sidecar's copy of the api server's specs, kept in ``path``."""

    def __init__(
        self,
        path: Path,
        api: ApiServerClient,
        *,
        first_backoff: float = 0.1,
        max_backoff: float = 10.0,
    ) -> None:
        self.path = path
        self.api = api
        self.flags = FeatureFlags()
        self.fingerprint = ""  # of the set held: the api server sends only a different one
        self._backoff = Backoff(first_backoff, max_backoff)

    def load(self) -> None:
        """The copy kept by the last run, if any (a damaged file is logged and ignored:
        the api server sends the specs again)."""
        tighten(self.path)  # an earlier version may have left it readable by others
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("feature specs: cannot read %s: %s", self.path, exc)
            return
        try:
            self._replace(pb.FeatureSpecs.FromString(data))
        except (DecodeError, KimballError) as exc:
            log.warning(
                "feature specs: %s is damaged (%s); waiting for the api server", self.path, exc
            )
            return
        log.info(
            "feature specs: %d loaded from %s (version %d)",
            len(self.flags.specs),
            self.path,
            self.flags.version,
        )

    async def _run(self) -> None:
        backoff = self._backoff
        while True:
            request = pb.WatchFeatureSpecsRequest(fingerprint=self.fingerprint)
            call = self.api.service.WatchFeatureSpecs(request, metadata=self.api.metadata)
            try:
                async for message in call:
                    backoff.reset()
                    self._keep(message)
                problem = "the api server ended the stream"
            except grpc.aio.AioRpcError as exc:
                problem = f"{exc.code().name}: {exc.details()}"
            finally:
                call.cancel()
            if backoff.failures == 0:
                log.warning(
                    "feature specs: watching the api server at %s failed (%s); flags are "
                    "answered from the local copy, retrying with backoff",
                    self.api.address,
                    problem,
                )
            await backoff.wait()

    def _keep(self, message: pb.FeatureSpecs) -> None:
        try:
            self._replace(message)
        except KimballError as exc:  # a spec this version cannot use: keep the old copy
            log.error("feature specs from the api server refused: %s", exc.message)
            return
        try:
            # Durable: else a power loss may leave an empty "copy".
            atomic_write(self.path, message.SerializeToString())
        except OSError as exc:
            log.warning("feature specs: cannot keep the copy in %s: %s", self.path, exc)

    def _replace(self, message: pb.FeatureSpecs) -> None:
        self.flags.replace_all([spec_from_proto(s) for s in message.specs], message.version)
        self.fingerprint = message.fingerprint
