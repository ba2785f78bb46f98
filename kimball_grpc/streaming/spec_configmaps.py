"""Feature specs kept in Kubernetes ConfigMaps too, as the original service kept them:
one in this server's namespace, a copy in each additional namespace for the sidecars
running there.

The write-ahead log and the snapshots stay the source of truth. The ConfigMaps
follow: after each accepted spec change the whole set is written to each of them,
in the background, in the original's format (``codec.original_specs``). A write
reads the ConfigMap first and replaces it naming the ``resourceVersion`` read; if
someone changed it in between (409), it reads again and retries, a few times. A
write that fails (no answer, refused, conflicts each time) is counted, logged and
retried with backoff; spec changes and ingestion go on meanwhile.

At start, once the state is restored, the home ConfigMap is read, and the specs it
holds whose names the state lacks are imported (through the same path as
``SetFeatureSpec``: logged, then applied). Only when the ConfigMap changed since
this server last wrote it, by the ``resourceVersion`` it keeps in its data
directory: a spec deleted here whose deletion had not reached the ConfigMap yet
does not come back. Nothing is written before that first read has succeeded, so
specs held only by the ConfigMap are never overwritten unread.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from kimball_grpc.codec.original_specs import (
    OriginalSpecsError,
    decode_original_specs,
    encode_original_specs,
)
from kimball_grpc.core.errors import KimballError
from kimball_grpc.core.feature_flags import FeatureFlags, FeatureSpec
from kimball_grpc.outbound.background import BackgroundLoop
from kimball_grpc.outbound.backoff import Backoff
from kimball_grpc.outbound.kubernetes import (
    ConfigMapConflict,
    ConfigMapMissing,
    ConfigMaps,
    KubernetesError,
)
from storage.fsutil import atomic_write

log = logging.getLogger(__name__)

DATA_KEY = "data"  # the ConfigMap key the original used
MAX_CONFLICTS = 5  # re-reads after a 409 before the write counts as failed (then backoff)


@dataclass(frozen=True)
class ConfigMapRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class SpecConfigMapMetrics:
    """The store's series in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.writes = Counter(
            "kimball_feature_spec_configmap_writes",
            "Writes of the feature specs to a ConfigMap, by namespace and result: written, "
            "unchanged (it held them already), conflict (it changed since read: read again).",
            ["namespace", "result"],
            registry=registry,
        )
        self.failures = Counter(
            "kimball_feature_spec_configmap_failures",
            "Reads (at start) and writes of a feature spec ConfigMap that failed (no answer, "
            "refused, or a conflict each time), by namespace and operation; retried with "
            "backoff.",
            ["namespace", "operation"],
            registry=registry,
        )
        self.behind = Gauge(
            "kimball_feature_spec_configmap_behind",
            "1 while a ConfigMap lacks the latest feature spec change, by namespace.",
            ["namespace"],
            registry=registry,
        )
        self.imported = Counter(
            "kimball_feature_spec_configmap_imported",
            "Feature specs read from the home ConfigMap at start, by result: imported "
            "(the state lacked them) or refused (unusable, or past a limit).",
            ["result"],
            registry=registry,
        )


class SpecConfigMaps(BackgroundLoop):
    """Keeps ``flags`` in the ``home`` ConfigMap and its ``copies``: ``start()`` once the
    state is restored (import, then writes)."""

    def __init__(
        self,
        flags: FeatureFlags,
        next_change: Callable[[], Awaitable[object]],
        import_spec: Callable[[FeatureSpec], Awaitable[None]],
        configmaps: ConfigMaps,
        home: ConfigMapRef,
        copies: tuple[ConfigMapRef, ...],
        marker: Path,
        metrics: SpecConfigMapMetrics,
        *,
        first_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        """``next_change()`` is done at the first spec change after the call;
        ``import_spec`` sets a spec as ``SetFeatureSpec`` does; ``marker`` is where the
        home ConfigMap's last written ``resourceVersion`` is kept."""
        self.flags = flags
        self._next_change = next_change
        self._import_spec = import_spec
        self.configmaps = configmaps
        self.home = home
        self.targets = (home, *copies)
        self._marker = marker
        self.metrics = metrics
        self._backoff = Backoff(first_backoff, max_backoff)
        self._written: dict[ConfigMapRef, str | None] = dict.fromkeys(self.targets)
        for target in self.targets:
            metrics.behind.labels(target.namespace).set(1)

    async def stop(self) -> None:
        """Stop (a write not done yet is done at the next start: the state wins then)."""
        await super().stop()
        await self.configmaps.close()

    async def _run(self) -> None:
        await self._retrying("read", self._import)
        while True:
            # Taken before writing: a change while writing is not missed.
            change = asyncio.ensure_future(self._next_change())
            try:
                await self._retrying("write", self._write_all)
                await change
            finally:
                change.cancel()

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[list[str]]]) -> None:
        """``attempt()`` until it reports no failure, waiting with backoff in between."""
        backoff = self._backoff
        while True:
            failures = await attempt()
            if not failures:
                if backoff.failures:
                    log.info(
                        "feature spec ConfigMaps: %s again after %d tries",
                        what,
                        backoff.failures + 1,
                    )
                backoff.reset()
                return
            if backoff.failures == 0:
                log.warning(
                    "feature spec ConfigMaps: cannot %s %s; ingestion and spec changes go "
                    "on, retrying with backoff",
                    what,
                    "; ".join(failures),
                )
            await backoff.wait()

    async def _import(self) -> list[str]:
        try:
            current = await self.configmaps.read(self.home.namespace, self.home.name)
        except KubernetesError as exc:
            self.metrics.failures.labels(self.home.namespace, "read").inc()
            return [f"{self.home}: {exc}"]
        if current is None or current.resource_version == self._last_written():
            return []  # none yet, or as this server left it
        try:
            specs, problems = decode_original_specs(current.data.get(DATA_KEY, "").encode())
        except OriginalSpecsError as exc:
            specs, problems = [], [f"{exc}; it will hold this server's specs"]
        for problem in problems:
            log.warning("feature spec ConfigMap %s: not imported: %s", self.home, problem)
            self.metrics.imported.labels("refused").inc()
        for spec in specs:
            if spec.name in self.flags.specs:
                continue  # the state wins
            try:
                await self._import_spec(spec)
            except KimballError as exc:
                log.warning(
                    "feature spec ConfigMap %s: %r not imported: %s", self.home, spec.name, exc
                )
                self.metrics.imported.labels("refused").inc()
                continue
            log.info("feature spec ConfigMap %s: imported %r", self.home, spec.name)
            self.metrics.imported.labels("imported").inc()
        return []

    async def _write_all(self) -> list[str]:
        """The current set to each ConfigMap not holding it yet; the failures."""
        version = self.flags.version
        data = encode_original_specs(self.flags.listed())
        failures = []
        for target in self.targets:
            if self._written[target] == data:
                continue
            try:
                resource_version = await self._write(target, data)
            except KubernetesError as exc:
                self.metrics.failures.labels(target.namespace, "write").inc()
                failures.append(f"{target}: {exc}")
                continue
            self._written[target] = data
            if target == self.home and resource_version:
                self._keep_marker(resource_version)
        for target in self.targets:
            behind = self._written[target] != data or self.flags.version != version
            self.metrics.behind.labels(target.namespace).set(int(behind))
        return failures

    async def _write(self, target: ConfigMapRef, data: str) -> str:
        """``data`` into ``target``; the ``resourceVersion`` that holds it."""
        writes = self.metrics.writes
        for _ in range(MAX_CONFLICTS):
            current = await self.configmaps.read(target.namespace, target.name)
            try:
                if current is None:
                    written = await self.configmaps.create(
                        target.namespace, target.name, {DATA_KEY: data}
                    )
                elif current.data.get(DATA_KEY) == data:
                    writes.labels(target.namespace, "unchanged").inc()
                    return current.resource_version
                else:
                    written = await self.configmaps.replace(
                        current, {**current.data, DATA_KEY: data}
                    )
            except (ConfigMapConflict, ConfigMapMissing):
                writes.labels(target.namespace, "conflict").inc()
                continue  # changed, created or deleted meanwhile: read it again
            writes.labels(target.namespace, "written").inc()
            return written
        raise KubernetesError(409, f"it changed each time it was read ({MAX_CONFLICTS} times)")

    def _last_written(self) -> str | None:
        try:
            kept = json.loads(self._marker.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(kept, dict) or kept.get("configmap") != str(self.home):
            return None
        version = kept.get("resource_version")
        return version if isinstance(version, str) else None

    def _keep_marker(self, resource_version: str) -> None:
        text = json.dumps({"configmap": str(self.home), "resource_version": resource_version})
        try:
            atomic_write(self._marker, text.encode())
        except OSError as exc:
            log.warning("feature spec ConfigMaps: cannot keep %s: %s", self._marker, exc)
