"""A sidecar's feature specs read from its namespace's ConfigMap, mounted as a file, as
the original's sidecars read them (``FEATURES_MODE=sidecar`` with the configmap
feature spec store).

The api server writes the ConfigMap (``streaming.spec_configmaps``); Kubernetes
updates the mounted file. The file is read at start and then every ``refresh``
seconds; a change replaces the whole set. A missing or unreadable file is logged
once and the specs held are kept; a spec that cannot be used is left out and
logged, the others are kept.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from kimball_grpc.codec.original_specs import OriginalSpecsError, decode_original_specs
from kimball_grpc.core.feature_flags import FeatureFlags
from kimball_grpc.outbound.background import BackgroundLoop

log = logging.getLogger(__name__)


class SpecFile(BackgroundLoop):
    """The specs in ``path``, read again every ``refresh`` seconds."""

    def __init__(self, path: Path, refresh: float) -> None:
        self.path = path
        self.refresh = refresh
        self.flags = FeatureFlags()
        self._read: bytes | None = None  # the content the specs came from
        self.problem = ""  # with the file now ("" if none); a lasting one is logged once

    def load(self) -> None:
        """Read the file now."""
        self._take(self._contents())

    def _contents(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            self._report(f"cannot read {self.path}: {exc.strerror or exc}; keeping the specs held")
            return None

    def _take(self, data: bytes | None) -> None:
        """The specs in ``data``, if it changed (on the event loop: the flags are read there)."""
        if data is None or data == self._read:
            return
        try:
            specs, problems = decode_original_specs(data)
        except OriginalSpecsError as exc:
            self._report(f"{self.path}: {exc}; keeping the specs held")
            return
        self._read = data
        self.problem = ""
        for problem in problems:
            log.warning("feature specs: %s: left out: %s", self.path, problem)
        self.flags.replace_all(specs, self.flags.version + 1)
        log.info("feature specs: %d read from %s", len(specs), self.path)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            self._take(await asyncio.to_thread(self._contents))

    def _report(self, problem: str) -> None:
        if problem != self.problem:
            log.warning("feature specs: %s", problem)
            self.problem = problem
