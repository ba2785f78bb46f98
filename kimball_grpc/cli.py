"""The ``kimball`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from kimball_grpc.errors import ConfigError
from kimball_grpc.server import serve
from kimball_grpc.settings import environment, load_settings, parse_port


def _port_flag(flag: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            return parse_port(flag, value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kimball", description="Kimball analytics service")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the server")
    run.add_argument("--host", dest="grpc_host", help="address to listen on (default [::])")
    run.add_argument(
        "--grpc-port", type=_port_flag("--grpc-port"), help="gRPC port (default 50051)"
    )
    run.add_argument("--api-port", type=_port_flag("--api-port"), help="REST port (default 8080)")
    run.add_argument("--data-dir", type=Path, help="local data directory (default kimball-data)")
    run.add_argument(
        "--config", type=Path, help="app.config file (env KIMBALL_CONFIG; /kimball/app.config)"
    )
    health = commands.add_parser("health", help="exit 0 if the server reports SERVING")
    health.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the gRPC server")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    return parser


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
    args = _parser().parse_args(argv)
    if args.command == "health":
        return check_health(args.target, args.timeout)
    try:
        settings = load_settings(
            environment(),
            config_path=args.config,
            overrides={
                "grpc_host": args.grpc_host,
                "grpc_port": args.grpc_port,
                "api_port": args.api_port,
                "data_dir": args.data_dir,
            },
        )
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"kimball: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
