"""The ``kimball`` command."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib.metadata
import logging
import os
import signal
import ssl
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from kimball_grpc.app import serve, serve_gateway
from kimball_grpc.cli import client_commands as client
from kimball_grpc.config.garbage_collection import configure_garbage_collection
from kimball_grpc.config.logs import configure_logging
from kimball_grpc.config.settings import (
    Settings,
    environment,
    limit_field,
    load_settings,
    parse_advertise_address,
    parse_cluster_query_deadline_ms,
    parse_configmap_name,
    parse_feature_spec_store,
    parse_fsync_policy,
    parse_kubernetes_namespace,
    parse_lease_seconds,
    parse_limit,
    parse_listen_host,
    parse_log_format,
    parse_log_level,
    parse_max_response_bytes,
    parse_nats_urls,
    parse_partitions,
    parse_port,
    parse_replica_id,
    parse_rest_workers,
    parse_seconds,
    parse_snapshots_kept,
    parse_stream_replicas,
)
from kimball_grpc.config.tls import ClientTls, load_client_tls
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.core.limits import MAX_BATCH_EVENTS, STATE_LIMITS, Limit

T = TypeVar("T")


def _flag(parse: Callable[[str, str], T], flag: str) -> Callable[[str], T]:
    """An option's type: ``parse(flag, value)``, its ``ConfigError`` as argparse's error."""

    def parse_flag(value: str) -> T:
        try:
            return parse(flag, value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return parse_flag


def limit_flag(limit: Limit) -> str:
    """The command-line option of a growth limit: ``--max-namespaces``."""
    return "--" + limit_field(limit).replace("_", "-")


def _seconds(value: str) -> float:
    try:
        return parse_seconds("the value", value)
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds, got {value!r}"
        ) from None


def _add_max_response_bytes(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--max-response-bytes",
        type=_flag(parse_max_response_bytes, "--max-response-bytes"),
        help="the largest answer sent or taken from a Kimball server; a whole answer past it "
        "is refused, telling the client to page (env KIMBALL_MAX_RESPONSE_BYTES; "
        "default 67108864, 64 MiB)",
    )


def _add_log_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--log-level",
        type=_flag(parse_log_level, "--log-level"),
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (env LOG_LEVEL; default INFO)",
    )
    command.add_argument(
        "--log-format",
        type=_flag(parse_log_format, "--log-format"),
        help="text, or json: one object per line (env KIMBALL_LOG_FORMAT; default text)",
    )
    command.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a line per REST request and gRPC call on the kimball.access logger "
        "(env KIMBALL_ACCESS_LOG; default on)",
    )


def _snapshots_kept(value: str) -> int:
    try:
        return parse_snapshots_kept("--snapshots-kept", value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _batch_size(value: str) -> int:
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_BATCH_EVENTS):
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_BATCH_EVENTS}, got {value!r}")
    return int(value)


def _http_url(value: str) -> str:
    try:
        parts = urllib.parse.urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a bad port or an unclosed [IPv6 address]
        valid = False
    if not valid:
        raise argparse.ArgumentTypeError(
            f"must be an http:// or https:// URL such as http://127.0.0.1:8080/ready, got {value!r}"
        )
    return value


def _rfc3339(value: str) -> Timestamp:
    try:
        return client.parse_datetime(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kimball", description="Kimball analytics service")
    parser.add_argument(
        "--version", action="version", version=f"kimball {importlib.metadata.version('kimball')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the server")
    _add_listen_hosts(run)
    run.add_argument(
        "--grpc-port", type=_flag(parse_port, "--grpc-port"), help="gRPC port (default 50051)"
    )
    run.add_argument(
        "--api-port", type=_flag(parse_port, "--api-port"), help="REST port (default 8080)"
    )
    run.add_argument("--data-dir", type=Path, help="local data directory (default kimball-data)")
    run.add_argument(
        "--config", type=Path, help="app.config file (env KIMBALL_CONFIG; /kimball/app.config)"
    )
    run.add_argument(
        "--storage",
        dest="storage_uri",
        help="where snapshots go: file:///path, s3://bucket/prefix or gs://bucket/prefix "
        "(env KIMBALL_STORAGE; default <data-dir>/objects)",
    )
    run.add_argument(
        "--wal-fsync",
        type=_flag(parse_fsync_policy, "--wal-fsync"),
        help="write-ahead log fsync: always (default), interval or never (env KIMBALL_WAL_FSYNC)",
    )
    run.add_argument(
        "--rest-workers",
        type=_flag(parse_rest_workers, "--rest-workers"),
        metavar="N",
        help="REST worker processes that parse and validate requests beside this one, "
        "sharing the REST port (env KIMBALL_REST_WORKERS; default 0: REST in this process)",
    )
    for limit in STATE_LIMITS:
        run.add_argument(
            limit_flag(limit),
            dest=limit_field(limit),
            type=_flag(parse_limit, limit_flag(limit)),
            metavar="N",
            help=f"the {limit.noun} limit (env {limit.setting}; default {limit.default:,}; "
            f"see docs/operations.md)",
        )
    _add_max_response_bytes(run)
    _add_log_options(run)
    run.add_argument(
        "--snapshots-kept",
        type=_snapshots_kept,
        help="verified snapshots kept, the log back to the oldest of them "
        "(env KIMBALL_SNAPSHOTS_KEPT; default 2)",
    )
    run.add_argument(
        "--wal-skip-damaged",
        action="store_true",
        default=None,
        help="start even if records are lost to a damaged write-ahead log or snapshot, "
        "skipping them (counted and logged) instead of stopping (env KIMBALL_WAL_SKIP_DAMAGED)",
    )
    _add_feature_spec_store(run)
    _add_cluster_options(run)
    _add_tokens_file(run)
    _add_server_tls(run)
    _add_client_tls(run, None, "the api server (sidecar mode)")
    gateway = commands.add_parser(
        "gateway", help="run the REST gateway alone, in front of a remote gRPC server"
    )
    gateway.add_argument("--grpc-target", required=True, help="HOST:PORT of Kimball's gRPC")
    gateway.add_argument(
        "--host",
        dest="grpc_host",
        type=_flag(parse_listen_host, "--host"),
        help="address to listen on, unless --api-host says (env KIMBALL_HOST; default ::)",
    )
    _add_api_host(gateway)
    gateway.add_argument(
        "--api-port", type=_flag(parse_port, "--api-port"), help="REST port (default 8080)"
    )
    gateway.add_argument("--config", type=Path, help="app.config file (for api_auth_tokens)")
    _add_max_response_bytes(gateway)
    _add_tokens_file(gateway)
    _add_server_tls(gateway)
    _add_client_tls(gateway, None, "the gRPC target")
    _add_log_options(gateway)
    health = commands.add_parser("health", help="exit 0 if the server reports SERVING")
    health.add_argument(
        "--target",
        default=environ.get("KIMBALL_TARGET") or client.DEFAULT_TARGET,
        help=f"HOST:PORT of the gRPC server (env KIMBALL_TARGET; default {client.DEFAULT_TARGET})",
    )
    health.add_argument(
        "--http",
        metavar="URL",
        type=_http_url,
        help="also GET this URL and require 200, e.g. http://127.0.0.1:8080/ready (the REST "
        "side: a server can answer gRPC while its REST port is unreachable)",
    )
    health.add_argument("--timeout", type=_seconds, default=3.0, help="seconds to wait, each check")
    _add_client_tls(health, environ, "the server")
    _add_client_commands(commands, environ)
    return parser


def _add_cluster_options(run: argparse.ArgumentParser) -> None:
    """Cluster mode (docs/scale-out.md): the NATS servers and this replica's place."""
    run.add_argument(
        "--nats-url",
        dest="nats_urls",
        type=_flag(parse_nats_urls, "--nats-url"),
        metavar="URL[,URL...]",
        help="run as a cluster replica on these NATS JetStream servers (env KIMBALL_NATS_URL; "
        "default: none, a single node with its own write-ahead log)",
    )
    run.add_argument(
        "--nats-creds-file",
        type=Path,
        help="NATS credentials file (user JWT and NKey seed; env KIMBALL_NATS_CREDS_FILE)",
    )
    run.add_argument(
        "--replica-id",
        type=_flag(parse_replica_id, "--replica-id"),
        help="this replica's stable name (env KIMBALL_REPLICA_ID; default the host name)",
    )
    run.add_argument(
        "--partitions",
        type=_flag(parse_partitions, "--partitions"),
        metavar="N",
        help="user partitions of the event stream, fixed when it is created "
        "(env KIMBALL_PARTITIONS; default 64)",
    )
    run.add_argument(
        "--nats-stream-replicas",
        type=_flag(parse_stream_replicas, "--nats-stream-replicas"),
        metavar="N",
        help="NATS servers keeping each event (env KIMBALL_NATS_STREAM_REPLICAS; default 3)",
    )
    run.add_argument(
        "--lease-seconds",
        type=_flag(parse_lease_seconds, "--lease-seconds"),
        metavar="SECONDS",
        help="cluster mode: the membership lease, 1 to 3600; a replica not heard from for "
        "this long loses its partitions; the same on every replica "
        "(env KIMBALL_LEASE_SECONDS; default 10)",
    )
    run.add_argument(
        "--advertise-address",
        type=_flag(parse_advertise_address, "--advertise-address"),
        metavar="HOST:PORT",
        help="cluster mode: where the other replicas reach this replica's gRPC port "
        "(env KIMBALL_ADVERTISE_ADDRESS; default <host name>:<gRPC port>)",
    )
    run.add_argument(
        "--cluster-query-deadline-ms",
        type=_flag(parse_cluster_query_deadline_ms, "--cluster-query-deadline-ms"),
        metavar="MS",
        help="cluster mode: how long a query waits for the owners of the partitions, 1 to "
        "60000; past it the query fails UNAVAILABLE naming the partitions "
        "(env KIMBALL_CLUSTER_QUERY_DEADLINE_MS; default 5000)",
    )


def _add_feature_spec_store(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--feature-spec-store",
        type=_flag(parse_feature_spec_store, "--feature-spec-store"),
        help="log (default): specs only in the write-ahead log and snapshots; configmap: api "
        "mode also keeps them in a Kubernetes ConfigMap and copies it to ADDITIONAL_NAMESPACES, "
        "a sidecar reads them from its namespace's copy mounted as --feature-spec-file "
        "(env KIMBALL_FEATURE_SPEC_STORE)",
    )
    run.add_argument(
        "--feature-spec-configmap",
        type=_flag(parse_configmap_name, "--feature-spec-configmap"),
        metavar="NAME",
        help="the ConfigMap (env KIMBALL_FEATURE_SPEC_CONFIGMAP; default features-state-store)",
    )
    run.add_argument(
        "--feature-spec-configmap-namespace",
        type=_flag(parse_kubernetes_namespace, "--feature-spec-configmap-namespace"),
        metavar="NAMESPACE",
        help="its namespace (env KIMBALL_FEATURE_SPEC_CONFIGMAP_NAMESPACE; default: NAMESPACE, "
        "else getkimball)",
    )
    run.add_argument(
        "--feature-spec-file",
        type=Path,
        metavar="PATH",
        help="sidecar: the ConfigMap's copy, mounted (env KIMBALL_FEATURE_SPEC_FILE; default "
        "/features/data)",
    )


def _add_listen_hosts(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--host",
        dest="grpc_host",
        type=_flag(parse_listen_host, "--host"),
        help="the address gRPC listens on: :: (the default) or 0.0.0.0 for every address, "
        "IPv4 and IPv6; an IP address; a host name (env KIMBALL_HOST)",
    )
    _add_api_host(command)


def _add_api_host(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--api-host",
        type=_flag(parse_listen_host, "--api-host"),
        help="the address REST listens on, as --host (env KIMBALL_API_HOST; default: --host's)",
    )


def _add_files(
    command: argparse.ArgumentParser,
    options: dict[str, tuple[str, str]],
    environ: Mapping[str, str] | None = None,
) -> None:
    """Options naming a file: ``{option: (its variable, help)}``. The variables are read
    here when ``environ`` is given (a client command), else by ``load_settings``."""
    for option, (variable, text) in options.items():
        value = environ.get(variable) if environ is not None else None
        command.add_argument(
            option,
            type=Path,
            default=Path(value) if value else None,
            help=f"{text} (env {variable})",
        )


def _add_tokens_file(command: argparse.ArgumentParser) -> None:
    _add_files(
        command,
        {
            "--api-tokens-file": (
                "KIMBALL_API_TOKENS_FILE",
                "a file of API tokens, one per line, # comments; re-read when it changes and "
                "on SIGHUP",
            )
        },
    )


def _add_server_tls(command: argparse.ArgumentParser) -> None:
    _add_files(
        command,
        {
            "--tls-cert-file": (
                "KIMBALL_TLS_CERT_FILE",
                "serve gRPC and REST over TLS with this PEM certificate chain (with "
                "--tls-key-file)",
            ),
            "--tls-key-file": ("KIMBALL_TLS_KEY_FILE", "its PEM private key"),
            "--tls-client-ca-file": (
                "KIMBALL_TLS_CLIENT_CA_FILE",
                "mutual TLS: clients must present a certificate signed by a CA of this PEM bundle",
            ),
        },
    )


def _add_client_tls(
    command: argparse.ArgumentParser, environ: Mapping[str, str] | None, peer: str
) -> None:
    """The TLS options of a client of ``peer``."""
    _add_files(
        command,
        {
            "--tls-ca-file": (
                "KIMBALL_TLS_CA_FILE",
                f"connect to {peer} over TLS, trusting the CAs of this PEM bundle",
            ),
            "--tls-client-cert-file": (
                "KIMBALL_TLS_CLIENT_CERT_FILE",
                f"the certificate to present when {peer} asks for one (mutual TLS; with "
                "--tls-client-key-file)",
            ),
            "--tls-client-key-file": ("KIMBALL_TLS_CLIENT_KEY_FILE", "its private key"),
        },
        environ,
    )


def _add_client_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], environ: Mapping[str, str]
) -> None:
    def add(name: str, summary: str, timeout: float | None = 10.0) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=summary, description=summary)
        _add_connection_options(command, environ, timeout)
        return command

    track = add("track", "track one event: USER did EVENT")
    track.add_argument("event", metavar="EVENT", help="event name")
    track.add_argument("user", metavar="USER", help="user id")
    track.add_argument("--value", type=float, help="a number to sum (first occurrence per user)")
    track.add_argument("--goal", action="store_true", help="mark EVENT as a goal")
    track.add_argument("--datetime", type=_rfc3339, help="when, RFC 3339 (default now)")

    load = add("load", "load events from CSV or JSON lines, in batches", timeout=None)
    load.add_argument("file", nargs="?", default="-", help="input file; - or none for stdin")
    load.add_argument("--format", choices=client.FORMATS, default="auto", help="default auto")
    load.add_argument("--goal", action="store_true", help="mark every loaded event as a goal")
    load.add_argument("--prefix", default="", help="prepend this to every event name")
    load.add_argument(
        "--batch", type=_batch_size, default=1000, help="events per message (default 1000)"
    )
    load.add_argument(
        "--progress-interval",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="when stderr is not a terminal, a progress line at most this often (default 10; "
        "on a terminal, a progress bar)",
    )

    add("analytics", "print the counters of the namespace").add_argument(
        "--json", action="store_true", help="print the response as JSON"
    )
    add("goals", "print the goals of the namespace").add_argument(
        "--json", action="store_true", help="print the response as JSON"
    )

    predictions = add("predictions", "print predictions: per goal and event, or for events/user")
    about = predictions.add_mutually_exclusive_group()
    about.add_argument(
        "--event", dest="events", action="append", default=[], help="an event done (repeatable)"
    )
    about.add_argument("--user", default="", help="predict for this user's events")
    predictions.add_argument("--json", action="store_true", help="print the response as JSON")

    nudges = add("nudges", "print the events of a goal a user has not done, best first")
    nudges.add_argument("--goal", required=True, help="the goal")
    nudges.add_argument("--user", required=True, help="the user id")
    nudges.add_argument("--json", action="store_true", help="print the response as JSON")

    original = add(
        "import-original",
        "set the feature specs kept by the original Erlang service: its features_store object "
        "(from S3 or GCS) or its ConfigMap's data value, as a file",
    )
    original.add_argument("file", metavar="FILE", help="the stored state; - for stdin")
    original.add_argument(
        "--replace", action="store_true", help="overwrite specs of the same name set here"
    )

    _add_flags_commands(commands, environ)

    tail = add(
        "tail",
        "print events as Kimball accepts them, one line each, until Ctrl-C "
        "(--namespace: only that namespace; none: every namespace)",
        timeout=None,
    )
    tail.add_argument(
        "--event", dest="events", action="append", default=[], help="only this event (repeatable)"
    )
    tail.add_argument("--prefix", default="", help="only events whose name starts with this")
    tail.add_argument(
        "--after-sequence",
        type=_sequence,
        metavar="N",
        help="first the events after sequence number N, read back from the write-ahead log "
        "(0: from the first), then live ones (default: live events only)",
    )
    tail.add_argument("--json", action="store_true", help="print each event as a JSON line")


def _sequence(value: str) -> int:
    if not (value.isascii() and value.isdigit() and int(value) < 2**64):
        raise argparse.ArgumentTypeError(f"must be a sequence number, 0 or more, got {value!r}")
    return int(value)


def _add_flags_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    environ: Mapping[str, str],
) -> None:
    """``kimball flags list|get|set|evaluate|history``: the feature specs (flags) over gRPC."""
    flags = commands.add_parser(
        "flags",
        help="list, show, set and evaluate feature flags, and show their history",
        description="feature flags",
    )
    actions = flags.add_subparsers(dest="flags_command", required=True, metavar="ACTION")

    def action(name: str, summary: str) -> argparse.ArgumentParser:
        command = actions.add_parser(name, help=summary, description=summary)
        _add_connection_options(command, environ, 10.0)
        return command

    action("list", "print every flag").add_argument(
        "--json", action="store_true", help="print the response as JSON"
    )
    action("get", "print a flag's spec as JSON, the form `flags set` takes").add_argument(
        "name", metavar="NAME", help="the flag"
    )
    action(
        "set",
        "set a flag from its spec as a JSON object, as `flags get` prints it "
        "(fields left out take their defaults)",
    ).add_argument("file", metavar="FILE", nargs="?", default="-", help="the spec; - for stdin")
    history = action(
        "history", "print a flag's recent changes, newest first: when, which token, what"
    )
    history.add_argument("name", metavar="NAME", help="the flag's name")
    history.add_argument("--json", action="store_true", help="print the response as JSON")
    evaluate = action("evaluate", "print every flag's value for a user")
    evaluate.add_argument(
        "--user",
        default="{}",
        metavar="JSON",
        help='the user object, e.g. \'{"user_id": "u1", "plan": "pro"}\' (default {})',
    )
    evaluate.add_argument(
        "--context",
        default="{}",
        metavar="JSON",
        help='e.g. \'{"namespace": "shop", "feature": "checkout"}\' to count the '
        "evaluation as the user's event (default {})",
    )
    evaluate.add_argument("--json", action="store_true", help="print the response as JSON")


def _add_connection_options(
    command: argparse.ArgumentParser, environ: Mapping[str, str], timeout: float | None
) -> None:
    command.add_argument(
        "--target",
        default=environ.get("KIMBALL_TARGET") or client.DEFAULT_TARGET,
        help=f"HOST:PORT of Kimball (env KIMBALL_TARGET; default {client.DEFAULT_TARGET})",
    )
    command.add_argument("--namespace", default="", help="namespace (default: default)")
    command.add_argument(
        "--token",
        default=environ.get("KIMBALL_TOKEN") or None,
        help="API token, sent as a bearer token (env KIMBALL_TOKEN)",
    )
    command.add_argument(
        "--timeout",
        type=_seconds,
        default=timeout,
        help=f"seconds to wait for the answer (default {timeout or 'no limit'})",
    )
    _add_client_tls(command, environ, "Kimball")


def _run_client_command(args: argparse.Namespace) -> int:
    # Ctrl-C ends the command at once, like any Unix tool: no traceback, and no wait for
    # gRPC's request thread, which may be blocked reading stdin. So does a closed pipe
    # (`kimball tail | head`), which Python would report as a BrokenPipeError traceback.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    connection = client.Connection(
        args.target, args.namespace, args.token, args.timeout, _client_tls(args)
    )
    commands: dict[str, Callable[[], None]] = {
        "track": lambda: client.track(
            connection, args.event, args.user, value=args.value, goal=args.goal, when=args.datetime
        ),
        "load": lambda: client.load(
            connection,
            args.file,
            client.LoadOptions(
                args.format, args.goal, args.prefix, args.batch, args.progress_interval
            ),
        ),
        "analytics": lambda: client.analytics(connection, as_json=args.json),
        "goals": lambda: client.goals(connection, as_json=args.json),
        "predictions": lambda: client.predictions(
            connection, args.events, args.user, as_json=args.json
        ),
        "nudges": lambda: client.nudges(connection, args.goal, args.user, as_json=args.json),
        "import-original": lambda: client.import_original(
            connection, args.file, replace=args.replace
        ),
        "tail": lambda: client.tail(
            connection,
            client.TailFilter(args.events, args.prefix, args.after_sequence),
            as_json=args.json,
        ),
        "flags list": lambda: client.flags_list(connection, as_json=args.json),
        "flags get": lambda: client.flags_get(connection, args.name),
        "flags set": lambda: client.flags_set(connection, args.file),
        "flags evaluate": lambda: client.flags_evaluate(
            connection, args.user, args.context, as_json=args.json
        ),
        "flags history": lambda: client.flag_history(connection, args.name, as_json=args.json),
    }
    name = f"flags {args.flags_command}" if args.command == "flags" else args.command
    return client.run(connection, commands[name])


def _client_tls(args: argparse.Namespace) -> ClientTls | None:
    """The TLS a client command's options ask for (``ConfigError`` for a wrong file)."""
    return load_client_tls(args.tls_ca_file, args.tls_client_cert_file, args.tls_client_key_file)


def check_health(
    target: str, timeout: float, http_url: str | None = None, tls: ClientTls | None = None
) -> int:
    """0 if the gRPC health service at ``target`` (over TLS with ``tls``) says SERVING and
    ``http_url`` (when given) answers 200, else 1; every check is made, and each failure
    printed with its reason."""
    healthy = _grpc_serving(target, timeout, tls)
    if http_url is not None:
        healthy = _http_ok(http_url, timeout, tls) and healthy
    return 0 if healthy else 1


def _grpc_serving(target: str, timeout: float, tls: ClientTls | None) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with client.plain_or_tls_channel(target, tls) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as exc:
            print(f"kimball: {target} is not healthy: {exc.code().name}", file=sys.stderr)
            return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _http_ok(url: str, timeout: float, tls: ClientTls | None) -> bool:
    # Straight to the server: a proxy from the environment has no business in a health check.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if tls is not None:
        handlers.append(urllib.request.HTTPSHandler(context=_https_context(tls)))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except urllib.error.URLError as exc:  # refused, unresolvable, timed out connecting
        print(f"kimball: {url} is not healthy: {exc.reason}", file=sys.stderr)
        return False
    except (OSError, http.client.HTTPException) as exc:  # timed out reading, not HTTP
        print(f"kimball: {url} is not healthy: {exc!r}", file=sys.stderr)
        return False
    if status != 200:
        print(f"kimball: {url} is not healthy: HTTP {status}", file=sys.stderr)
        return False
    print(f"{url}: HTTP 200")
    return True


def _https_context(tls: ClientTls) -> ssl.SSLContext:
    """An HTTPS client context trusting ``tls.ca``, presenting its certificate if any."""
    context = ssl.create_default_context(cadata=tls.ca.decode("ascii"))
    if tls.certificate_chain is not None and tls.private_key is not None:
        # ssl loads a certificate and key only from files: private ones, gone at once.
        with tempfile.TemporaryDirectory() as directory:
            chain, key = Path(directory, "chain.pem"), Path(directory, "key.pem")
            chain.write_bytes(tls.certificate_chain)
            key.write_bytes(tls.private_key)
            context.load_cert_chain(chain, key)
    return context


def _serve_then_exit(settings: Settings) -> NoReturn:
    """``serve`` until it has stopped, then end the process at once. By then the calls are
    answered, the write-ahead log synced and closed, and the last snapshot stored or given
    up; what a normal exit adds (freeing every object of the state, waiting for a worker
    thread still copying a snapshot given up) takes seconds that grow with the state."""
    with asyncio.Runner() as runner:
        runner.run(serve(settings))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    environ = environment()
    args = _parser(environ).parse_args(argv)
    if args.command not in ("serve", "gateway"):
        try:
            if args.command == "health":
                return check_health(args.target, args.timeout, args.http, _client_tls(args))
            return _run_client_command(args)
        except ConfigError as exc:
            print(f"kimball: {exc.message}", file=sys.stderr)
            return 2
    overrides = {
        "grpc_host": args.grpc_host,
        "api_host": args.api_host,
        "api_port": args.api_port,
        "max_response_bytes": args.max_response_bytes,
        "api_tokens_file": args.api_tokens_file,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "access_log": args.access_log,
    }
    overrides |= {
        name: getattr(args, name)
        for name in (
            "tls_cert_file",
            "tls_key_file",
            "tls_client_ca_file",
            "tls_ca_file",
            "tls_client_cert_file",
            "tls_client_key_file",
        )
    }
    if args.command == "serve":
        overrides |= {
            "grpc_port": args.grpc_port,
            "data_dir": args.data_dir,
            "storage_uri": args.storage_uri,
            "wal_fsync": args.wal_fsync,
            "rest_workers": args.rest_workers,
            "snapshots_kept": args.snapshots_kept,
            "wal_skip_damaged": args.wal_skip_damaged,
            "feature_spec_store": args.feature_spec_store,
            "feature_spec_configmap": args.feature_spec_configmap,
            "feature_spec_configmap_namespace": args.feature_spec_configmap_namespace,
            "feature_spec_file": args.feature_spec_file,
            "lease_seconds": args.lease_seconds,
            "cluster_query_deadline_ms": args.cluster_query_deadline_ms,
        }
        overrides |= {
            name: getattr(args, name)
            for name in (
                "nats_urls",
                "nats_creds_file",
                "replica_id",
                "partitions",
                "nats_stream_replicas",
                "advertise_address",
            )
        }
        overrides |= {
            limit_field(limit): getattr(args, limit_field(limit)) for limit in STATE_LIMITS
        }
    try:
        settings = load_settings(environ, config_path=args.config, overrides=overrides)
        configure_logging(settings.log_level, settings.log_format)
        configure_garbage_collection()
        for warning in settings.config_warnings:
            logging.getLogger("kimball_grpc.config").warning("%s", warning)
        if args.command == "serve":
            _serve_then_exit(settings)
        else:
            asyncio.run(serve_gateway(settings, args.grpc_target))
    except ConfigError as exc:
        print(f"kimball: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
