"""Settings: parsed and validated once at start-up into one typed object.

Sources, later ones winning: built-in defaults, the original's Erlang-terms
config file (``app.config``, ``sys.config``: ``[{features, [...]}]``, with the files
it includes), environment variables, command-line flags. Nothing else in Kimball reads
the environment.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from kimball_grpc.codec.erlang_terms import Atom, ErlangTermError, parse_terms_with_lines
from kimball_grpc.config.logs import LogFormat
from kimball_grpc.config.tls import ClientTls, ServerTls, load_client_tls, load_server_tls
from kimball_grpc.config.tokens import parse_token_list
from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.core.limits import (
    COUNTERS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_SPOOL_MAX_EVENTS,
    DEFAULT_SUBSCRIBER_BUFFER_EVENTS,
    EVENT_NAMES,
    FEATURE_SPECS,
    GOALS,
    KEEPALIVE_PING_SECONDS,
    MAX_MESSAGE_BYTES,
    MAX_RESPONSE_BYTES_CEILING,
    MAX_SUBSCRIBER_BUFFER_EVENTS,
    NAMESPACES,
    STATE_LIMITS,
    STREAM_LIMITS,
    STREAMS,
    SUBSCRIBERS,
    Limit,
    StateLimits,
)
from storage.location import StorageConfig, parse_storage_uri, s3_endpoint_url
from storage.snapshots import DEFAULT_KEEP
from storage.wal import FsyncPolicy

DEFAULT_CONFIG_PATH = Path("/kimball/app.config")
DEFAULT_GRPC_PORT = 50051
MAX_SNAPSHOTS_KEPT = 100
DEFAULT_PARTITIONS = 64
MAX_PARTITIONS = 1024  # each owned partition is an engine and a consumer on every replica
DEFAULT_STREAM_REPLICAS = 3
MAX_STREAM_REPLICAS = 5  # JetStream's own bound on a stream's replicas


class Mode(StrEnum):
    API = "api"
    SIDECAR = "sidecar"


class FeatureSpecStore(StrEnum):
    """Where feature specs are kept besides the write-ahead log and snapshots."""

    LOG = "log"  # nowhere else
    # api mode: a Kubernetes ConfigMap too, copied to ADDITIONAL_NAMESPACES; sidecar mode:
    # read from its namespace's copy, mounted as a file (as the original did both).
    CONFIGMAP = "configmap"


# The original's names: its ConfigMap, the copy in each additional namespace, its
# NAMESPACE default, and the file its sidecars read (the ConfigMap mounted at /features).
DEFAULT_SPEC_CONFIGMAP = "features-state-store"
DEFAULT_SPEC_CONFIGMAP_COPY = "getkimball-features"
DEFAULT_SPEC_CONFIGMAP_NAMESPACE = "getkimball"
DEFAULT_SPEC_FILE = Path("/features/data")
DEFAULT_SPEC_REFRESH_S = 15.0  # how often the original's sidecars read it


@dataclass(frozen=True)
class PredictionTarget:
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class HttpLimits:
    """The REST server's connections: how long a client may take to send a request's
    headers, then its body; how long an idle keep-alive connection is kept; how many
    connections are open at once (more are refused with 503). Defaults in line with
    nginx's (client_header_timeout, client_body_timeout, keepalive_timeout 75 s,
    worker_connections 512)."""

    header_timeout_s: float = 60.0
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 75.0
    max_connections: int = 512


DEFAULT_LEASE_SECONDS = 10.0  # cluster mode: the membership lease
DEFAULT_CLUSTER_QUERY_DEADLINE_MS = 5_000  # cluster mode: a fanned-out query's deadline


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to start."""

    # Where gRPC and REST listen: "::" (and "0.0.0.0") is every address, IPv4 and IPv6; the
    # REST address follows the gRPC one unless set (None).
    grpc_host: str = "::"
    api_host: str | None = None
    grpc_port: int = DEFAULT_GRPC_PORT
    api_port: int = 8080
    data_dir: Path = Path("kimball-data")
    config_path: Path | None = None
    mode: Mode = Mode.API
    analytics_host: str = ""  # sidecar: the api server's gRPC, host:port
    # sidecar: the token it presents to the api server (default: its first api_auth_tokens)
    analytics_token: str | None = field(default=None, repr=False)
    spool_max_events: int = DEFAULT_SPOOL_MAX_EVENTS  # sidecar: undelivered events it keeps
    # Long-lived streams open at once: all kinds, and subscriptions among them.
    max_streams: int = STREAMS.default
    max_subscribers: int = SUBSCRIBERS.default
    # The latest accepted events held for subscribers that fall behind.
    subscriber_buffer_events: int = DEFAULT_SUBSCRIBER_BUFFER_EVENTS
    namespace: str = "default"
    additional_namespaces: tuple[str, ...] = ()
    storage_path_prefix: str = ""
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    access_log: bool = True  # a line per REST request and gRPC call, on kimball.access
    kubernetes_memory_limit: int | None = None
    site: str = ""
    cluster: str = ""
    counter_config: CounterConfig = field(default_factory=CounterConfig)
    counter_startup_delay_ms: int = 0
    # The config file's file_store_path: local snapshots go there instead of <data_dir>/objects.
    file_store_path: Path | None = None
    # What the config file held that Kimball does not use: logged as warnings at start-up.
    config_warnings: tuple[str, ...] = ()
    api_auth: bool = True
    api_auth_tokens: tuple[str, ...] = ()  # app.config's
    # More accepted tokens: KIMBALL_API_TOKENS, and a file re-read when it changes (polled
    # every api_tokens_file_poll_s seconds) or on SIGHUP. All sources together are accepted.
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    api_tokens_file: Path | None = None
    api_tokens_file_poll_s: float = 5.0
    # TLS: the server's certificate and key (both or neither), and the CA that clients'
    # certificates must be signed by (mutual TLS); a client's (a sidecar's relay, the
    # gateway's channel) CA bundle and its own certificate and key. Files, read and checked
    # by load_settings into server_tls and client_tls.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_client_cert_file: Path | None = None
    tls_client_key_file: Path | None = None
    server_tls: ServerTls | None = None
    client_tls: ClientTls | None = None
    external_grpc_event_targets: tuple[tuple[str, int], ...] = ()
    external_grpc_prediction_targets: tuple[PredictionTarget, ...] = ()
    external_prediction_deadline_ms: int = 200
    # The largest answer sent (and received from a Kimball server): a whole analytics or
    # list answer past it is refused, telling the client to page.
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # Durability: where snapshots go (a URI, or the original's bucket variables), the
    # write-ahead log's fsync policy, how often a snapshot is taken.
    storage_uri: str = ""
    s3_bucket: str = ""
    s3_host: str = ""
    gcs_bucket: str = ""
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_region: str | None = None
    gcs_credentials_file: Path | None = None
    gcs_endpoint: str | None = None
    wal_fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    wal_fsync_interval_ms: int = 200
    snapshot_interval_s: float = 60.0
    # Verified snapshots kept; the log is kept back to the oldest of them.
    snapshots_kept: int = DEFAULT_KEEP
    # Start past records that a damaged log or snapshot lost (counted and logged) instead
    # of stopping: the operator's explicit choice, for one start.
    wal_skip_damaged: bool = False
    storage: StorageConfig | None = None  # derived from the fields above by load_settings
    # How far clients can make the state grow (api mode): core.limits.STATE_LIMITS.
    max_namespaces: int = NAMESPACES.default
    max_event_names: int = EVENT_NAMES.default  # per namespace
    max_counters: int = COUNTERS.default  # named and weekly, all namespaces
    max_goals: int = GOALS.default  # per namespace
    max_feature_specs: int = FEATURE_SPECS.default
    # The edges: REST connections (see HttpLimits) and gRPC connections: the time to
    # send the HTTP/2 preface, how often a client may ping a quiet connection and how
    # many pings too early end it, calls at once on one connection, and a connection's
    # age (None: no limit) with the grace its calls get once it is reached.
    http_header_timeout_s: float = HttpLimits.header_timeout_s
    http_body_timeout_s: float = HttpLimits.body_timeout_s
    http_keepalive_timeout_s: float = HttpLimits.keepalive_timeout_s
    http_max_connections: int = HttpLimits.max_connections
    # REST worker processes sharing the REST socket (api mode): they parse and validate
    # ingest requests and hand the batches to this process; 0 serves REST in-process.
    rest_workers: int = 0
    grpc_handshake_timeout_s: float = 60.0
    grpc_min_ping_interval_s: float = 30.0
    grpc_max_ping_strikes: int = 2
    grpc_max_concurrent_streams: int = 256
    grpc_max_connection_age_s: float | None = None
    grpc_max_connection_age_grace_s: float = 30.0
    # Feature specs in Kubernetes ConfigMaps (FeatureSpecStore): the ConfigMap, its
    # namespace (NAMESPACE's when that is set), the copy's name in ADDITIONAL_NAMESPACES.
    feature_spec_store: FeatureSpecStore = FeatureSpecStore.LOG
    feature_spec_configmap: str = DEFAULT_SPEC_CONFIGMAP
    feature_spec_configmap_namespace: str = DEFAULT_SPEC_CONFIGMAP_NAMESPACE
    feature_spec_configmap_copy: str = DEFAULT_SPEC_CONFIGMAP_COPY
    feature_spec_file: Path = DEFAULT_SPEC_FILE  # sidecar: its namespace's copy, mounted
    feature_spec_refresh_s: float = DEFAULT_SPEC_REFRESH_S
    # The Kubernetes API: a kubeconfig file, else in the cluster (the service account).
    kubeconfig: Path | None = None
    kubernetes_service_host: str = ""
    kubernetes_service_port: str = ""
    # Cluster mode (docs/scale-out.md): set NATS URLs turn it on. Events go to the JetStream
    # stream KIMBALL_EVENTS in ``partitions`` subjects (fixed when the stream is created),
    # kept on ``nats_stream_replicas`` NATS servers; ``replica_id`` names this replica.
    nats_urls: tuple[str, ...] = ()
    nats_creds_file: Path | None = None
    replica_id: str = field(default_factory=lambda: socket.gethostname())
    partitions: int = DEFAULT_PARTITIONS
    nats_stream_replicas: int = DEFAULT_STREAM_REPLICAS

    @property
    def cluster_mode(self) -> bool:
        """Cluster mode: the event log is NATS JetStream, not the local write-ahead log."""
        return bool(self.nats_urls)

    # Cluster mode: a replica's membership lease (the members bucket's TTL; renewed every
    # third of it). Every replica of a cluster must use the same.
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    # Cluster mode: host:port at which the other replicas reach this one's gRPC port;
    # empty: the address it listens on, or the host name (``app.advertised_address``).
    advertise_address: str = ""
    # Cluster mode: how long a query waits for the owners of the partitions to answer.
    cluster_query_deadline_ms: int = DEFAULT_CLUSTER_QUERY_DEADLINE_MS

    @property
    def rest_host(self) -> str:
        """The address the REST server listens on: ``api_host``, else gRPC's."""
        return self.api_host or self.grpc_host

    @property
    def wal_dir(self) -> Path:
        """The write-ahead log's directory: always on local disk."""
        return self.data_dir / "wal"

    @property
    def state_limits(self) -> StateLimits:
        """The growth limits, as the core takes them."""
        return StateLimits(
            **{limit.name: getattr(self, limit_field(limit)) for limit in STATE_LIMITS}
        )

    @property
    def http_limits(self) -> HttpLimits:
        """The REST server's connection limits."""
        return HttpLimits(
            self.http_header_timeout_s,
            self.http_body_timeout_s,
            self.http_keepalive_timeout_s,
            self.http_max_connections,
        )

    @property
    def spool_dir(self) -> Path:
        """A sidecar's spool of undelivered events: always on local disk."""
        return self.data_dir / "spool"


def load_settings(
    environ: Mapping[str, str],
    config_path: Path | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Defaults, then the config file, then ``environ``, then ``overrides`` (CLI flags)."""
    settings = Settings()
    path = config_path or _env_path(environ, "KIMBALL_CONFIG")
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        settings = replace(settings, config_path=path, **read_config_file(path))
    settings = replace(settings, **_from_environment(environ))
    settings = replace(settings, **{k: v for k, v in (overrides or {}).items() if v is not None})
    check_feature_spec_store(settings)
    check_cluster(settings)
    return replace(
        settings,
        storage=storage_config(settings),
        server_tls=load_server_tls(
            settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
        ),
        client_tls=load_client_tls(
            settings.tls_ca_file, settings.tls_client_cert_file, settings.tls_client_key_file
        ),
    )


def storage_config(settings: Settings) -> StorageConfig:
    """Where snapshots go: ``storage_uri``, else the bucket set, else ``file_store_path``,
    else ``<data-dir>/objects``.

    Objects go under ``storage_path_prefix`` (default: the namespace) in a bucket.
    """
    chosen = [
        name
        for name, value in (
            ("KIMBALL_STORAGE (--storage)", settings.storage_uri),
            ("S3_BUCKET", settings.s3_bucket),
            ("GCS_BUCKET", settings.gcs_bucket),
        )
        if value
    ]
    if len(chosen) > 1:
        raise ConfigError(f"storage: set only one of {' and '.join(chosen)}")
    prefix = (settings.storage_path_prefix or settings.namespace).strip("/")
    if settings.storage_uri:
        uri = settings.storage_uri
    elif settings.s3_bucket:
        uri = f"s3://{settings.s3_bucket}/{prefix}"
    elif settings.gcs_bucket:
        uri = f"gs://{settings.gcs_bucket}/{prefix}"
    else:
        uri = (settings.file_store_path or settings.data_dir / "objects").resolve().as_uri()
    config = StorageConfig(
        uri=uri,
        s3_endpoint=settings.s3_host or None,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        aws_region=settings.aws_region,
        gcs_endpoint=settings.gcs_endpoint,
        gcs_credentials_file=settings.gcs_credentials_file,
    )
    try:
        parse_storage_uri(config.uri)
        if config.s3_endpoint:
            s3_endpoint_url(config.s3_endpoint)
    except ValueError as exc:
        raise ConfigError(f"storage: {exc}") from None
    return config


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name, "")
    return Path(value) if value else None


def _whole_number(name: str, value: str, meaning: str) -> int:
    # int() would also take "1_000", " 80" and non-ASCII digits.
    if not (value.isascii() and value.isdigit()):
        raise ConfigError(f"{name} must be {meaning}, got {value!r}")
    return int(value)


def _milliseconds(name: str, value: str) -> int:
    """A whole number of milliseconds, at least 1, from a variable called ``name``."""
    milliseconds = _whole_number(name, value, "a whole number of milliseconds")
    if milliseconds < 1:
        raise ConfigError(f"{name} must be at least 1")
    return milliseconds


def limit_field(limit: Limit) -> str:
    """The ``Settings`` field of a growth limit: ``max_namespaces``."""
    return f"max_{limit.name}"


def parse_limit(name: str, value: str) -> int:
    """A limit's value from text (a flag or a variable called ``name``): a whole number,
    at least 1; ``ConfigError`` otherwise."""
    maximum = _whole_number(name, value, "a whole number, at least 1")
    if maximum < 1:
        raise ConfigError(f"{name} must be at least 1, got {value!r}")
    return maximum


def parse_subscriber_buffer(name: str, value: str) -> int:
    """How many accepted events to hold for subscribers, from text: 1 to
    ``MAX_SUBSCRIBER_BUFFER_EVENTS``; ``ConfigError`` otherwise."""
    events = parse_limit(name, value)
    if events > MAX_SUBSCRIBER_BUFFER_EVENTS:
        raise ConfigError(f"{name} must be at most {MAX_SUBSCRIBER_BUFFER_EVENTS:,}, got {value!r}")
    return events


MAX_REST_WORKERS = 64


def parse_rest_workers(name: str, value: str) -> int:
    """How many REST worker processes, from text: 0 (REST in the server process) to
    ``MAX_REST_WORKERS``; ``ConfigError`` otherwise."""
    workers = _whole_number(name, value, "a whole number of processes (0: none)")
    if workers > MAX_REST_WORKERS:
        raise ConfigError(f"{name} must be at most {MAX_REST_WORKERS}, got {value!r}")
    return workers


def parse_port(name: str, value: str) -> int:
    """A port number from text (a flag or a variable called ``name``), or ``ConfigError``."""
    port = _whole_number(name, value, "a port number")
    if port > 65535:
        raise ConfigError(f"{name} must be between 0 and 65535, got {port}")
    return port


def parse_max_response_bytes(name: str, value: str) -> int:
    """The largest answer, in bytes, from text (a flag or a variable called ``name``), or
    ``ConfigError``: from MAX_MESSAGE_BYTES (what other answers need) to gRPC's ceiling."""
    limit = _whole_number(name, value, "a whole number of bytes")
    if not MAX_MESSAGE_BYTES <= limit <= MAX_RESPONSE_BYTES_CEILING:
        raise ConfigError(
            f"{name} must be between {MAX_MESSAGE_BYTES} (4 MiB) and "
            f"{MAX_RESPONSE_BYTES_CEILING} bytes, got {value!r}"
        )
    return limit


def parse_log_level(name: str, value: str) -> str:
    """A log level's name from text (any case: debug, INFO, ...), or ``ConfigError``."""
    level = value.strip().upper()
    if level not in logging.getLevelNamesMapping() or level == "NOTSET":
        choices = "DEBUG, INFO, WARNING, ERROR or CRITICAL"
        raise ConfigError(f"{name} must be a log level ({choices}), got {value!r}")
    return level


def parse_log_format(name: str, value: str) -> LogFormat:
    """``text`` or ``json`` from text (any case), or ``ConfigError``."""
    return _choice(LogFormat, name, value)


C = TypeVar("C", bound=StrEnum)


def _choice(choices: type[C], name: str, value: str) -> C:
    """One of ``choices`` from text (any case, spaces around ignored), or ``ConfigError``
    naming the setting ``name`` and every choice."""
    try:
        return choices(value.strip().lower())
    except ValueError:
        listed = " or ".join(choice.value for choice in choices)
        raise ConfigError(f"{name} must be {listed}, got {value!r}") from None


def parse_analytics_host(name: str, value: str) -> str:
    """The api server's gRPC address from text: ``host:port``, ``[v6]:port``, or a host
    alone (port 50051), optionally as ``grpc://...``; ``ConfigError`` otherwise."""
    return parse_grpc_address(name, value, "the api server's", "the relay delivers over gRPC")


def parse_advertise_address(name: str, value: str) -> str:
    """The address other replicas reach this replica's gRPC port at, as
    ``parse_grpc_address`` reads it."""
    why = "the replicas call each other over gRPC"
    return parse_grpc_address(name, value, "this replica's", why)


def parse_grpc_address(name: str, value: str, whose: str, why: str) -> str:
    """A gRPC address from text: ``host:port``, ``[v6]:port``, or a host alone (port
    50051), optionally as ``grpc://...``; ``ConfigError`` naming ``name`` (the error says
    it must be ``whose`` gRPC address, not a URL, because ``why``) otherwise."""
    text = value.strip().removeprefix("grpc://").rstrip("/")
    if "://" in text or "/" in text:
        raise ConfigError(
            f"{name} must be {whose} gRPC address, host:port (e.g. kimball:50051), "
            f"not a URL: {why}; got {value!r}"
        )
    if text.count(":") > 1 and not text.startswith("["):
        text = f"[{text}]"  # a bare IPv6 address
    if text.startswith("["):
        host, bracket, rest = text.partition("]")
        host += bracket
        port = rest[1:] if rest.startswith(":") else ("" if not rest else "?")
    else:
        host, _, port = text.partition(":")
    port = port or str(DEFAULT_GRPC_PORT)
    if host in ("", "[]") or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"{name} must be host:port (e.g. kimball:50051), got {value!r}")
    return f"{host}:{port}"


def _from_environment(environ: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    api_port = environ.get("API_PORT") or environ.get("PORT")
    if api_port:
        out["api_port"] = parse_port("API_PORT" if environ.get("API_PORT") else "PORT", api_port)
    if environ.get("GRPC_PORT"):
        out["grpc_port"] = parse_port("GRPC_PORT", environ["GRPC_PORT"])
    if environ.get("FEATURES_MODE"):
        try:
            out["mode"] = Mode(environ["FEATURES_MODE"])
        except ValueError:
            raise ConfigError(
                f"FEATURES_MODE must be api or sidecar, got {environ['FEATURES_MODE']!r}"
            ) from None
    if environ.get("ANALYTICS_HOST"):
        out["analytics_host"] = parse_analytics_host("ANALYTICS_HOST", environ["ANALYTICS_HOST"])
    if environ.get("ANALYTICS_TOKEN"):
        out["analytics_token"] = environ["ANALYTICS_TOKEN"].strip()
    if environ.get("KIMBALL_SPOOL_MAX_EVENTS"):
        limit = _whole_number(
            "KIMBALL_SPOOL_MAX_EVENTS", environ["KIMBALL_SPOOL_MAX_EVENTS"], "a number of events"
        )
        if limit < 1:
            raise ConfigError("KIMBALL_SPOOL_MAX_EVENTS must be at least 1")
        out["spool_max_events"] = limit
    for limit in STREAM_LIMITS:
        if environ.get(limit.setting):
            out[limit_field(limit)] = parse_limit(limit.setting, environ[limit.setting])
    if environ.get("KIMBALL_SUBSCRIBER_BUFFER_EVENTS"):
        out["subscriber_buffer_events"] = parse_subscriber_buffer(
            "KIMBALL_SUBSCRIBER_BUFFER_EVENTS", environ["KIMBALL_SUBSCRIBER_BUFFER_EVENTS"]
        )
    if environ.get("KIMBALL_REST_WORKERS"):
        out["rest_workers"] = parse_rest_workers(
            "KIMBALL_REST_WORKERS", environ["KIMBALL_REST_WORKERS"]
        )
    if environ.get("NAMESPACE"):
        out["namespace"] = environ["NAMESPACE"]
    if environ.get("ADDITIONAL_NAMESPACES"):
        names = [n.strip() for n in environ["ADDITIONAL_NAMESPACES"].split(",")]
        out["additional_namespaces"] = tuple(n for n in names if n)
    if environ.get("STORAGE_PATH_PREFIX"):
        out["storage_path_prefix"] = environ["STORAGE_PATH_PREFIX"]
    out |= _parsed(
        environ,
        {
            "LOG_LEVEL": ("log_level", parse_log_level),
            "KIMBALL_LOG_FORMAT": ("log_format", parse_log_format),
            "KIMBALL_ACCESS_LOG": ("access_log", parse_switch),
        },
    )
    if environ.get("KUBERNETES_MEMORY_LIMIT"):
        limit = _whole_number(
            "KUBERNETES_MEMORY_LIMIT", environ["KUBERNETES_MEMORY_LIMIT"], "a number of bytes"
        )
        if limit < 1:
            raise ConfigError(f"KUBERNETES_MEMORY_LIMIT must be at least 1 byte, got '{limit}'")
        out["kubernetes_memory_limit"] = limit
    if environ.get("KIMBALL_EXTERNAL_PREDICTION_DEADLINE_MS"):
        out["external_prediction_deadline_ms"] = _milliseconds(
            "KIMBALL_EXTERNAL_PREDICTION_DEADLINE_MS",
            environ["KIMBALL_EXTERNAL_PREDICTION_DEADLINE_MS"],
        )
    if environ.get("KIMBALL_MAX_RESPONSE_BYTES"):
        out["max_response_bytes"] = parse_max_response_bytes(
            "KIMBALL_MAX_RESPONSE_BYTES", environ["KIMBALL_MAX_RESPONSE_BYTES"]
        )
    if environ.get("KIMBALL_DATA_DIR"):
        out["data_dir"] = Path(environ["KIMBALL_DATA_DIR"])
    for limit in STATE_LIMITS:
        if environ.get(limit.setting):
            out[limit_field(limit)] = parse_limit(limit.setting, environ[limit.setting])
    out |= _storage_from_environment(environ)
    out |= _edges_from_environment(environ)
    out |= _spec_store_from_environment(environ)
    out |= _listeners_and_secrets_from_environment(environ)
    out |= _parsed(environ, _CLUSTER)
    return out


def parse_nats_urls(name: str, value: str) -> tuple[str, ...]:
    """Comma-separated NATS server URLs (nats://, tls://, ws:// or wss://, host and port)."""
    urls = tuple(url.strip() for url in value.split(",") if url.strip())
    if not urls:
        raise ConfigError(f"{name} must be one or more NATS URLs (nats://host:4222), got {value!r}")
    for url in urls:
        scheme, separator, rest = url.partition("://")
        host = rest.rsplit("@", 1)[-1].split("/", 1)[0]
        if not separator or scheme not in _NATS_SCHEMES or not host or host.startswith(":"):
            raise ConfigError(
                f"{name} must be NATS URLs such as nats://host:4222 (schemes "
                f"{', '.join(_NATS_SCHEMES)}), comma-separated; got {url!r}"
            )
    return urls


_NATS_SCHEMES = ("nats", "tls", "ws", "wss")
_REPLICA_ID = re.compile(r"[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?")


def parse_replica_id(name: str, value: str) -> str:
    """A replica id: letters, digits, '-', '_' and '.', at most 63, a letter or digit at
    each end (a NATS key and an object store key as it is; a pod's name fits)."""
    return _matching(
        _REPLICA_ID,
        name,
        value,
        "letters, digits, '-', '_' and '.' (at most 63, a letter or digit at each end)",
    )


def parse_partitions(name: str, value: str) -> int:
    count = _whole_number(name, value, "a number of partitions")
    if not 1 <= count <= MAX_PARTITIONS:
        raise ConfigError(f"{name} must be from 1 to {MAX_PARTITIONS}, got {count}")
    return count


def parse_stream_replicas(name: str, value: str) -> int:
    count = _whole_number(name, value, "a number of NATS servers")
    if not 1 <= count <= MAX_STREAM_REPLICAS:
        raise ConfigError(
            f"{name} must be from 1 to {MAX_STREAM_REPLICAS} (3 keeps every acknowledged event "
            f"through the loss of one NATS server; 1 is for a single NATS server), got {count}"
        )
    return count


def check_cluster(settings: Settings) -> None:
    """``ConfigError`` for settings that cluster mode cannot honour, or cluster settings
    given without it; the replica id (by default the host name) must be usable."""
    if not settings.cluster_mode:
        if settings.nats_creds_file is not None:
            raise ConfigError(
                "--nats-creds-file (KIMBALL_NATS_CREDS_FILE) is set without --nats-url "
                "(KIMBALL_NATS_URL): set both for cluster mode, or neither"
            )
        if settings.advertise_address:
            raise ConfigError(
                "--advertise-address (KIMBALL_ADVERTISE_ADDRESS) is set without --nats-url "
                "(KIMBALL_NATS_URL): it is where the other replicas of a cluster reach this "
                "one; set both for cluster mode, or neither"
            )
        return
    refused = {
        "sidecar mode (FEATURES_MODE=sidecar)": settings.mode is Mode.SIDECAR,
        "--rest-workers (KIMBALL_REST_WORKERS)": settings.rest_workers > 0,
        "the configmap feature spec store (--feature-spec-store)": (
            settings.feature_spec_store is FeatureSpecStore.CONFIGMAP
        ),
    }
    for what, chosen in refused.items():
        if chosen:
            raise ConfigError(
                f"cluster mode (--nats-url, KIMBALL_NATS_URL) cannot be combined with {what} "
                f"yet (docs/scale-out.md says what cluster mode runs so far)"
            )
    parse_replica_id(
        "the replica id (--replica-id, KIMBALL_REPLICA_ID; default the host name)",
        settings.replica_id,
    )
    configured = settings.api_auth_tokens or settings.api_tokens or settings.api_tokens_file
    if settings.api_auth and not configured:
        # A replica asks the others for their partitions' counts with its first token.
        raise ConfigError(
            "cluster mode with API authentication needs tokens every replica shares: set "
            "api_auth_tokens (app.config), KIMBALL_API_TOKENS or KIMBALL_API_TOKENS_FILE "
            "the same on every replica (a generated token is one replica's alone)"
        )
    if settings.nats_creds_file is not None and not settings.nats_creds_file.is_file():
        raise ConfigError(
            f"--nats-creds-file (KIMBALL_NATS_CREDS_FILE): no such file "
            f"{str(settings.nats_creds_file)!r}"
        )


# An RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def parse_listen_host(name: str, value: str) -> str:
    """An address to listen on, from text (a flag or a variable called ``name``): ``::`` or
    ``0.0.0.0`` (every address, IPv4 and IPv6), an IP address (an IPv6 one with or without
    brackets), ``localhost`` or a host name; returned without brackets. ``ConfigError``
    otherwise: empty, with a port, a URL."""
    text = value.strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    # A host name's last label is never all digits: "10.1" is no name, nor an address.
    numeric = text.rstrip(".").rpartition(".")[2].isdigit()
    if bare == text and len(text) <= 253 and _HOST_NAME.fullmatch(text) and not numeric:
        return text
    raise ConfigError(
        f"{name} must be an address to listen on: :: or 0.0.0.0 (every address), an IP "
        f"address, localhost or a host name, without a port (the port is its own setting); "
        f"got {value!r}"
    )


_TLS_FILES = {  # variable: setting, a path
    "KIMBALL_TLS_CERT_FILE": "tls_cert_file",
    "KIMBALL_TLS_KEY_FILE": "tls_key_file",
    "KIMBALL_TLS_CLIENT_CA_FILE": "tls_client_ca_file",
    "KIMBALL_TLS_CA_FILE": "tls_ca_file",
    "KIMBALL_TLS_CLIENT_CERT_FILE": "tls_client_cert_file",
    "KIMBALL_TLS_CLIENT_KEY_FILE": "tls_client_key_file",
}


def _listeners_and_secrets_from_environment(environ: Mapping[str, str]) -> dict[str, object]:
    """Listen addresses, API tokens and TLS files."""
    out = _from_table(environ, _TLS_FILES, Path)
    out |= _parsed(
        environ,
        {
            "KIMBALL_HOST": ("grpc_host", parse_listen_host),
            "KIMBALL_API_HOST": ("api_host", parse_listen_host),
            "KIMBALL_API_TOKENS": ("api_tokens", parse_token_list),
        },
    )
    if environ.get("KIMBALL_API_TOKENS_FILE"):
        out["api_tokens_file"] = Path(environ["KIMBALL_API_TOKENS_FILE"])
    if environ.get("KIMBALL_API_TOKENS_FILE_POLL"):
        out["api_tokens_file_poll_s"] = parse_seconds(
            "KIMBALL_API_TOKENS_FILE_POLL", environ["KIMBALL_API_TOKENS_FILE_POLL"]
        )
    return out


def _spec_store_from_environment(environ: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    if environ.get("NAMESPACE"):  # the original's namespace for its ConfigMap
        out["feature_spec_configmap_namespace"] = environ["NAMESPACE"]
    out |= _parsed(environ, _SPEC_STORE)
    if environ.get("KUBECONFIG"):
        # kubectl takes a list (a:b); the first file is the one read here.
        out["kubeconfig"] = Path(environ["KUBECONFIG"].split(os.pathsep)[0])
    if environ.get("KUBERNETES_SERVICE_HOST"):
        out["kubernetes_service_host"] = environ["KUBERNETES_SERVICE_HOST"]
        out["kubernetes_service_port"] = environ.get("KUBERNETES_SERVICE_PORT", "443")
    return out


def parse_feature_spec_store(name: str, value: str) -> FeatureSpecStore:
    """A feature spec store from text, or ``ConfigError``."""
    return _choice(FeatureSpecStore, name, value)


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def parse_kubernetes_namespace(name: str, value: str) -> str:
    """A Kubernetes namespace name (an RFC 1123 label: at most 63 lower-case letters,
    digits and ``-``, a letter or digit at each end), or ``ConfigError``."""
    return _matching(
        _DNS_LABEL,
        name,
        value,
        "a Kubernetes namespace name (lower-case letters, digits and '-', at most 63, a "
        "letter or digit at each end)",
    )


def _matching(pattern: re.Pattern[str], name: str, value: str, rule: str) -> str:
    """``value`` if ``pattern`` matches all of it, else ``ConfigError`` saying ``rule``."""
    if not pattern.fullmatch(value):
        raise ConfigError(f"{name} must be {rule}, got {value!r}")
    return value


def parse_configmap_name(name: str, value: str) -> str:
    """A ConfigMap name (an RFC 1123 subdomain: at most 253 characters, labels of
    lower-case letters, digits and ``-`` joined by ``.``), or ``ConfigError``."""
    if len(value) > 253 or not all(_DNS_LABEL.fullmatch(part) for part in value.split(".")):
        raise ConfigError(
            f"{name} must be a ConfigMap name (lower-case letters, digits, '-' and '.', at "
            f"most 253, a letter or digit at each end), got {value!r}"
        )
    return value


def _file(name: str, value: str) -> Path:
    return Path(value)


def check_feature_spec_store(settings: Settings) -> None:
    """With the configmap store in api mode, ``ConfigError`` unless every namespace it
    writes to is a namespace name (NAMESPACE is checked only then: it is a storage
    prefix too)."""
    if settings.feature_spec_store is FeatureSpecStore.CONFIGMAP and settings.mode is Mode.API:
        parse_kubernetes_namespace(
            "the feature spec ConfigMap's namespace (KIMBALL_FEATURE_SPEC_CONFIGMAP_NAMESPACE, "
            "else NAMESPACE)",
            settings.feature_spec_configmap_namespace,
        )
        for additional in settings.additional_namespaces:
            parse_kubernetes_namespace("each of ADDITIONAL_NAMESPACES", additional)


_EDGE_SECONDS = {  # variable: setting, a positive number of seconds
    "KIMBALL_HTTP_HEADER_TIMEOUT": "http_header_timeout_s",
    "KIMBALL_HTTP_BODY_TIMEOUT": "http_body_timeout_s",
    "KIMBALL_HTTP_KEEPALIVE_TIMEOUT": "http_keepalive_timeout_s",
    "KIMBALL_GRPC_HANDSHAKE_TIMEOUT": "grpc_handshake_timeout_s",
    "KIMBALL_GRPC_MIN_PING_INTERVAL": "grpc_min_ping_interval_s",
    "KIMBALL_GRPC_MAX_CONNECTION_AGE": "grpc_max_connection_age_s",
    "KIMBALL_GRPC_MAX_CONNECTION_AGE_GRACE": "grpc_max_connection_age_grace_s",
}
_EDGE_COUNTS = {  # variable: (setting, the least it may be)
    "KIMBALL_HTTP_MAX_CONNECTIONS": ("http_max_connections", 1),
    "KIMBALL_GRPC_MAX_PING_STRIKES": ("grpc_max_ping_strikes", 0),
    "KIMBALL_GRPC_MAX_CONCURRENT_STREAMS": ("grpc_max_concurrent_streams", 1),
}
# gRPC takes its times as a C int of milliseconds: 24 days at most.
_LONGEST_GRPC_SECONDS = (2**31 - 1) // 1000


def _edges_from_environment(environ: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, setting in _EDGE_SECONDS.items():
        if environ.get(name):
            seconds = parse_seconds(name, environ[name])
            if name.startswith("KIMBALL_GRPC_") and seconds > _LONGEST_GRPC_SECONDS:
                raise ConfigError(
                    f"{name} must be at most {_LONGEST_GRPC_SECONDS} seconds, got {seconds:g}"
                )
            out[setting] = seconds
    for name, (setting, least) in _EDGE_COUNTS.items():
        if environ.get(name):
            count = _whole_number(name, environ[name], "a whole number")
            if count < least:
                raise ConfigError(f"{name} must be at least {least}, got {count}")
            out[setting] = count
    interval = out.get("grpc_min_ping_interval_s", 0.0)
    if isinstance(interval, float) and interval > KEEPALIVE_PING_SECONDS:
        raise ConfigError(
            f"KIMBALL_GRPC_MIN_PING_INTERVAL must be at most {KEEPALIVE_PING_SECONDS} seconds, "
            f"got {interval:g}: sidecars ping their api server every {KEEPALIVE_PING_SECONDS} s, "
            f"and pings more often than this interval end their connection"
        )
    return out


_STORAGE_TEXT = {  # variable: setting, taken as given
    "KIMBALL_STORAGE": "storage_uri",
    "S3_BUCKET": "s3_bucket",
    "S3_HOST": "s3_host",
    "GCS_BUCKET": "gcs_bucket",
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "STORAGE_EMULATOR_HOST": "gcs_endpoint",
}


def _from_table(
    environ: Mapping[str, str], table: Mapping[str, str], convert: Callable[[str], object] = str
) -> dict[str, object]:
    """The settings of ``table`` (``{variable: setting}``) whose variables are set, each
    value through ``convert``."""
    return {setting: convert(environ[name]) for name, setting in table.items() if environ.get(name)}


def _parsed(
    environ: Mapping[str, str], table: Mapping[str, tuple[str, Callable[[str, str], object]]]
) -> dict[str, object]:
    """The settings of ``table`` (``{variable: (setting, parse)}``) whose variables are
    set, each value through ``parse(variable, value)``."""
    return {
        setting: parse(name, environ[name])
        for name, (setting, parse) in table.items()
        if environ.get(name)
    }


def _storage_from_environment(environ: Mapping[str, str]) -> dict[str, object]:
    out = _from_table(environ, _STORAGE_TEXT)
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        out["aws_region"] = region
    if environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        out["gcs_credentials_file"] = Path(environ["GOOGLE_APPLICATION_CREDENTIALS"])
    out |= _parsed(environ, _DURABILITY)
    return out


def parse_snapshots_kept(name: str, value: str) -> int:
    """How many verified snapshots to keep, 1 to ``MAX_SNAPSHOTS_KEPT``, or ``ConfigError``."""
    meaning = f"a whole number of snapshots from 1 to {MAX_SNAPSHOTS_KEPT}"
    kept = _whole_number(name, value, meaning)
    if not 1 <= kept <= MAX_SNAPSHOTS_KEPT:
        raise ConfigError(f"{name} must be {meaning}, got {value!r}")
    return kept


_SWITCH = {"true": True, "1": True, "yes": True, "on": True}
_SWITCH |= {"false": False, "0": False, "no": False, "off": False}


def parse_switch(name: str, value: str) -> bool:
    """On or off from text (true/false, 1/0, yes/no, on/off, any case), or ``ConfigError``."""
    try:
        return _SWITCH[value.strip().lower()]
    except KeyError:
        raise ConfigError(f"{name} must be true or false, got {value!r}") from None


def parse_fsync_policy(name: str, value: str) -> FsyncPolicy:
    """A write-ahead log fsync policy from text, or ``ConfigError``."""
    try:
        return FsyncPolicy(value)
    except ValueError:
        choices = ", ".join(p.value for p in FsyncPolicy)
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}") from None


# Below a second the renewals (a third of the lease) would race NATS round trips and
# replicas would lose their partitions on any hiccup; past an hour a dead replica's
# partitions would wait that long for a new owner.
LEASE_SECONDS_RANGE = (1.0, 3600.0)


# Below a millisecond no replica can answer; past a minute a client's call would hang on a
# replica that is gone rather than be told to ask again.
CLUSTER_QUERY_DEADLINE_MS_RANGE = (1, 60_000)


def parse_cluster_query_deadline_ms(name: str, value: str) -> int:
    """A fanned-out query's deadline in whole milliseconds, within
    ``CLUSTER_QUERY_DEADLINE_MS_RANGE``, or ``ConfigError``."""
    milliseconds = _whole_number(name, value, "a whole number of milliseconds")
    low, high = CLUSTER_QUERY_DEADLINE_MS_RANGE
    if not low <= milliseconds <= high:
        raise ConfigError(f"{name} must be from {low} to {high} milliseconds, got {value!r}")
    return milliseconds


def parse_lease_seconds(name: str, value: str) -> float:
    """A membership lease in seconds, within ``LEASE_SECONDS_RANGE``, or ``ConfigError``."""
    seconds = parse_seconds(name, value)
    low, high = LEASE_SECONDS_RANGE
    if not low <= seconds <= high:
        raise ConfigError(f"{name} must be from {low:g} to {high:g} seconds, got {value!r}")
    return seconds


def parse_seconds(name: str, value: str) -> float:
    """A positive, finite number of seconds from text, or ``ConfigError``."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return seconds


# Durability variables: each to its setting, through a parser given the variable's name.
_DURABILITY: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "KIMBALL_WAL_FSYNC": ("wal_fsync", parse_fsync_policy),
    "KIMBALL_WAL_FSYNC_INTERVAL_MS": ("wal_fsync_interval_ms", _milliseconds),
    "KIMBALL_SNAPSHOT_INTERVAL": ("snapshot_interval_s", parse_seconds),
    "KIMBALL_SNAPSHOTS_KEPT": ("snapshots_kept", parse_snapshots_kept),
    "KIMBALL_WAL_SKIP_DAMAGED": ("wal_skip_damaged", parse_switch),
}

# Cluster mode variables: each to its setting, through a parser given the name.
# Feature spec store variables: each to its setting, through a parser given the name.
_SPEC_STORE: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "KIMBALL_FEATURE_SPEC_STORE": ("feature_spec_store", parse_feature_spec_store),
    "KIMBALL_FEATURE_SPEC_CONFIGMAP": ("feature_spec_configmap", parse_configmap_name),
    "KIMBALL_FEATURE_SPEC_CONFIGMAP_NAMESPACE": (
        "feature_spec_configmap_namespace",
        parse_kubernetes_namespace,
    ),
    "KIMBALL_FEATURE_SPEC_CONFIGMAP_COPY": ("feature_spec_configmap_copy", parse_configmap_name),
    "KIMBALL_FEATURE_SPEC_FILE": ("feature_spec_file", _file),
    "KIMBALL_FEATURE_SPEC_REFRESH": ("feature_spec_refresh_s", parse_seconds),
}


def read_config_file(path: Path) -> dict[str, object]:
    """Settings from a config file in the original's format (``app.config``,
    ``sys.config``): a list of application sections, Kimball's being ``{features, [...]}``,
    and strings naming further config files to include. ``ConfigError`` names the file,
    the line where known, and the problem. What is read but not used is listed in
    ``config_warnings``."""
    features: list[_Written] = []
    others: dict[str, str] = {}  # another application's name: where its section is
    for section in _sections(path, ()):
        application, body = section.term
        if application == Atom("features"):
            if not isinstance(body, list):
                raise ConfigError(f"{section.where()}: {{features, ...}} must hold a list")
            features.extend(_Written(entry, section.path, section.line_of) for entry in body)
        elif application.name not in _OTP_APPLICATIONS:
            others.setdefault(application.name, section.where())
    out, ignored = _features(features)
    warnings = []
    if others:
        warnings.append(f"ignoring the config of applications other than Kimball: {_at(others)}")
    if ignored:
        warnings.append(
            f"ignoring settings of the original that have no use in Kimball: {_at(ignored)}"
        )
    return out | {"config_warnings": tuple(warnings)}


# The applications of Erlang/OTP itself. A release's sys.config configures some of them
# (kernel's logger, sasl): settings of the Erlang runtime that nothing in Kimball replaces,
# ignored without a word. A section of any other application is named in a warning.
_OTP_APPLICATION_NAMES = (
    "asn1 common_test compiler crypto debugger dialyzer diameter edoc eldap erl_docgen"
    " erl_interface erts et eunit ftp inets jinterface kernel megaco mnesia observer odbc"
    " os_mon parsetools public_key reltool runtime_tools sasl snmp ssh ssl stdlib"
    " syntax_tools tftp tools wx xmerl"
)
_OTP_APPLICATIONS = frozenset(_OTP_APPLICATION_NAMES.split())
# Settings the original read that mean nothing here: local_dev told it where its web UI's
# files were in a source checkout; the others it set itself at start-up from environment
# variables (NAMESPACE, ADDITIONAL_NAMESPACES, FEATURES_MODE, S3_BUCKET, S3_HOST,
# GCS_BUCKET, GOOGLE_APPLICATION_CREDENTIALS, STORAGE_PATH_PREFIX), over the config file's.
_IGNORED_FEATURE_NAMES = (
    "local_dev namespace namespaces mode analytics_event_mod s3_bucket s3_base_path s3_host"
    " gcs_bucket gcs_base_path gcs_credentials_path"
)
_IGNORED_FEATURES = frozenset(_IGNORED_FEATURE_NAMES.split())


@dataclass(frozen=True)
class _Written:
    """A term of a config file, and where it was written."""

    term: object
    path: Path
    line_of: Callable[[object], int | None]  # the line of a tuple, list or map of the file

    def where(self, term: object = None) -> str:
        """``path:line`` of ``term`` (default: this one), or the path alone."""
        line = self.line_of(self.term if term is None else term)
        return f"{self.path}:{line}" if line else str(self.path)


def _at(places: Mapping[str, str]) -> str:
    return ", ".join(f"{name} ({where})" for name, where in places.items())


def _sections(path: Path, including: tuple[Path, ...]) -> Iterator[_Written]:
    """The application sections of ``path``, in order, each file it includes read in its
    place (``including``: the files that include this one, outermost first)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        if including:
            raise ConfigError(
                f"{including[-1]}: cannot read the config file it includes, {path}: {exc}"
            ) from None
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        terms, line_of = parse_terms_with_lines(text, str(path))
    except ErlangTermError as exc:
        raise ConfigError(str(exc)) from None
    for term in terms:
        if not isinstance(term, list):
            raise ConfigError(f"{path}: expected a list like [{{features, [...]}}]")
        for item in term:
            written = _Written(item, path, line_of)
            if isinstance(item, str):
                yield from _sections(_included(path, item, including), (*including, path))
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Atom):
                yield written
            else:
                raise ConfigError(
                    f"{written.where()}: expected {{application, [...]}} or the name of a "
                    f"config file to include, got {item!r}"
                )


def _included(path: Path, name: str, including: tuple[Path, ...]) -> Path:
    """The file that ``name``, written in ``path``, includes. As Erlang reads a sys.config:
    ``.config`` is added unless the name ends with it, and a relative name is relative to
    the directory of the file that names it. A file including itself, directly or through
    others, is refused."""
    target = path.parent / (name if name.endswith(".config") else f"{name}.config")
    files = (*including, path)
    resolved = [p.resolve() for p in files]
    if target.resolve() in resolved:
        cycle = (*files[resolved.index(target.resolve()) :], target)
        raise ConfigError(
            f"{path}: including {name!r} makes a cycle: {' -> '.join(map(str, cycle))}"
        )
    return target


def _features(entries: list[_Written]) -> tuple[dict[str, object], dict[str, str]]:
    """The settings of the ``features`` entries, a later one winning as in Erlang, and the
    entries ignored (by name: where the first is)."""
    out: dict[str, object] = {}
    ignored: dict[str, str] = {}
    for entry in entries:
        term = entry.term
        if not (isinstance(term, tuple) and len(term) == 2 and isinstance(term[0], Atom)):
            raise ConfigError(f"{entry.where()}: each setting must be {{key, value}}, got {term!r}")
        setting = _Setting(term[0].name, term[1], entry)
        if setting.key in _IGNORED_FEATURES:
            ignored.setdefault(setting.key, entry.where())
        elif setting.key in _FEATURE_READERS:
            read = _FEATURE_READERS[setting.key](setting)
            if read is None:  # valid, but of no use here
                ignored.setdefault(setting.key, entry.where())
            else:
                out |= read
        else:
            known = [*_FEATURE_READERS, *_IGNORED_FEATURES]
            close = difflib.get_close_matches(setting.key, known, n=1)
            raise setting.fail("unknown setting" + (f"; did you mean {close[0]}?" if close else ""))
    return out, ignored


@dataclass(frozen=True)
class _Setting:
    """One ``{key, value}`` of the ``features`` section."""

    key: str
    raw: object  # the value as written
    written: _Written

    @property
    def value(self) -> object:
        """The value as plain Python: atoms and binaries as str."""
        return _plain(self.raw)

    def fail(self, problem: str, term: object = None) -> ConfigError:
        """The setting's error, at the line of ``term`` in it (default: its own)."""
        return ConfigError(f"{self.written.where(term)}: setting {self.key}: {problem}")


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, Atom):
        return value.name
    return None


def _plain(value: object) -> object:
    """Erlang terms to plain Python: atoms and binaries become str, recursively."""
    if isinstance(value, Atom | bytes):
        return _text(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def _deployment_name(setting: _Setting) -> dict[str, object]:
    if not isinstance(setting.value, str):
        raise setting.fail("must be a string")
    return {setting.key: setting.value}


def _counters(setting: _Setting) -> dict[str, object]:
    value = setting.value
    if not isinstance(value, dict) or not isinstance(value.get("init", []), list):
        raise setting.fail("must be a map #{init => [rule, ...]}")
    try:
        return {"counter_config": CounterConfig.from_mappings(value.get("init", []))}
    except ConfigError as exc:
        # Point at the rule itself: its map in the file, by its 1-based number.
        raw = setting.raw
        rules = raw.get(Atom("init"), []) if isinstance(raw, dict) else []
        number = int(exc.details.get("rule", "0"))
        rule = rules[number - 1] if 0 < number <= len(rules) else None
        raise setting.fail(exc.message, rule) from None


def _counter_startup_delay(setting: _Setting) -> dict[str, object]:
    value = setting.value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise setting.fail("must be a whole number of milliseconds >= 0")
    return {"counter_startup_delay_ms": value}


def _api_auth(setting: _Setting) -> dict[str, object]:
    if setting.value not in ("enable", "disable"):
        raise setting.fail("must be enable or disable")
    return {"api_auth": setting.value == "enable"}


def _api_auth_tokens(setting: _Setting) -> dict[str, object]:
    value = setting.value
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise setting.fail('must be a list of tokens like [<<"SECRET">>]')
    return {"api_auth_tokens": tuple(value)}


def _event_targets(setting: _Setting) -> dict[str, object]:
    targets = _list(setting.fail, setting.value)
    return {setting.key: tuple(_target(setting.fail, t, named=False) for t in targets)}


def _prediction_targets(setting: _Setting) -> dict[str, object]:
    targets = _list(setting.fail, setting.value)
    return {
        setting.key: tuple(PredictionTarget(*_target(setting.fail, t, named=True)) for t in targets)
    }


def _file_store_path(setting: _Setting) -> dict[str, object] | None:
    """The directory of the original's local store: here, where snapshots go when no other
    place is set. A relative path is relative to the directory of the file that sets it.
    An existing file is of no use (the original's first versions read feature specs from a
    JSON file there): None."""
    value = setting.value
    if not isinstance(value, str) or not value or "\0" in value:
        raise setting.fail('must be the path of a directory, like "/features/data"')
    path = setting.written.path.parent / value
    return None if path.exists() and not path.is_dir() else {"file_store_path": path}


# Each setting of the features section: its settings here, or None when it has no use.
_FEATURE_READERS: dict[str, Callable[[_Setting], dict[str, object] | None]] = {
    "site": _deployment_name,
    "cluster": _deployment_name,
    "counters": _counters,
    "counter_startup_delay": _counter_startup_delay,
    "api_auth": _api_auth,
    "api_auth_tokens": _api_auth_tokens,
    "external_grpc_event_targets": _event_targets,
    "external_grpc_prediction_targets": _prediction_targets,
    "file_store_path": _file_store_path,
}


def _list(fail, value: object) -> list[object]:
    if not isinstance(value, list):
        raise fail("must be a list")
    return value


def _target(fail, value: object, *, named: bool) -> tuple:
    shape = '{"name", "host", port}' if named else '{"host", port}'
    size = 3 if named else 2
    if not (isinstance(value, tuple) and len(value) == size):
        raise fail(f"each target must be {shape}, got {value!r}")
    *texts, port = value
    if not all(isinstance(t, str) and t for t in texts):
        raise fail(f"each target must be {shape}, got {value!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
        raise fail(f"port must be between 1 and 65535, got {port!r}")
    return (*texts, port)


def environment() -> Mapping[str, str]:
    """The process environment: read here, at start-up, and nowhere else."""
    return os.environ


_CLUSTER = {  # variable: (setting, parse)
    "KIMBALL_NATS_URL": ("nats_urls", parse_nats_urls),
    "KIMBALL_NATS_CREDS_FILE": ("nats_creds_file", _file),
    "KIMBALL_REPLICA_ID": ("replica_id", parse_replica_id),
    "KIMBALL_PARTITIONS": ("partitions", parse_partitions),
    "KIMBALL_NATS_STREAM_REPLICAS": ("nats_stream_replicas", parse_stream_replicas),
    "KIMBALL_LEASE_SECONDS": ("lease_seconds", parse_lease_seconds),
    "KIMBALL_ADVERTISE_ADDRESS": ("advertise_address", parse_advertise_address),
    "KIMBALL_CLUSTER_QUERY_DEADLINE_MS": (
        "cluster_query_deadline_ms",
        parse_cluster_query_deadline_ms,
    ),
}
