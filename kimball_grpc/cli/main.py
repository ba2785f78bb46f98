"""The ``kimball`` command."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from kimball_grpc.app import serve, serve_gateway
from kimball_grpc.cli import client_commands as client
from kimball_grpc.config.logs import configure_logging
from kimball_grpc.config.settings import (
    environment,
    limit_field,
    load_settings,
    parse_fsync_policy,
    parse_limit,
    parse_log_format,
    parse_log_level,
    parse_max_response_bytes,
    parse_port,
    parse_seconds,
    parse_snapshots_kept,
)
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


def _rfc3339(value: str) -> Timestamp:
    try:
        return client.parse_datetime(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kimball", description="Kimball analytics service")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the server")
    run.add_argument("--host", dest="grpc_host", help="address to listen on (default [::])")
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
    gateway = commands.add_parser(
        "gateway", help="run the REST gateway alone, in front of a remote gRPC server"
    )
    gateway.add_argument("--grpc-target", required=True, help="HOST:PORT of Kimball's gRPC")
    gateway.add_argument("--host", dest="grpc_host", help="address to listen on (default [::])")
    gateway.add_argument(
        "--api-port", type=_flag(parse_port, "--api-port"), help="REST port (default 8080)"
    )
    gateway.add_argument("--config", type=Path, help="app.config file (for api_auth_tokens)")
    _add_max_response_bytes(gateway)
    _add_log_options(gateway)
    health = commands.add_parser("health", help="exit 0 if the server reports SERVING")
    health.add_argument(
        "--target",
        default=environ.get("KIMBALL_TARGET") or client.DEFAULT_TARGET,
        help=f"HOST:PORT of the gRPC server (env KIMBALL_TARGET; default {client.DEFAULT_TARGET})",
    )
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    _add_client_commands(commands, environ)
    return parser


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


def _run_client_command(args: argparse.Namespace) -> int:
    # Ctrl-C ends the command at once, like any Unix tool: no traceback, and no wait for
    # gRPC's request thread, which may be blocked reading stdin.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    connection = client.Connection(args.target, args.namespace, args.token, args.timeout)
    commands: dict[str, Callable[[], None]] = {
        "track": lambda: client.track(
            connection, args.event, args.user, value=args.value, goal=args.goal, when=args.datetime
        ),
        "load": lambda: client.load(
            connection,
            args.file,
            client.LoadOptions(args.format, args.goal, args.prefix, args.batch),
        ),
        "analytics": lambda: client.analytics(connection, as_json=args.json),
        "goals": lambda: client.goals(connection, as_json=args.json),
        "predictions": lambda: client.predictions(
            connection, args.events, args.user, as_json=args.json
        ),
        "nudges": lambda: client.nudges(connection, args.goal, args.user, as_json=args.json),
    }
    return client.run(connection, commands[args.command])


def check_health(target: str, timeout: float) -> int:
    """0 if the gRPC health service at ``target`` says SERVING, else 1 (with the reason)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as exc:
            print(f"kimball: {target} is not healthy: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: list[str] | None = None) -> int:
    environ = environment()
    args = _parser(environ).parse_args(argv)
    if args.command == "health":
        return check_health(args.target, args.timeout)
    if args.command not in ("serve", "gateway"):
        return _run_client_command(args)
    overrides = {
        "grpc_host": args.grpc_host,
        "api_port": args.api_port,
        "max_response_bytes": args.max_response_bytes,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "access_log": args.access_log,
    }
    if args.command == "serve":
        overrides |= {
            "grpc_port": args.grpc_port,
            "data_dir": args.data_dir,
            "storage_uri": args.storage_uri,
            "wal_fsync": args.wal_fsync,
            "snapshots_kept": args.snapshots_kept,
            "wal_skip_damaged": args.wal_skip_damaged,
        }
        overrides |= {
            limit_field(limit): getattr(args, limit_field(limit)) for limit in STATE_LIMITS
        }
    try:
        settings = load_settings(environ, config_path=args.config, overrides=overrides)
        configure_logging(settings.log_level, settings.log_format)
        if args.command == "serve":
            asyncio.run(serve(settings))
        else:
            asyncio.run(serve_gateway(settings, args.grpc_target))
    except ConfigError as exc:
        print(f"kimball: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
