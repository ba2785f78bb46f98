"""The ``kimball`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from kimball_grpc.errors import ConfigError
from kimball_grpc.server import serve
from kimball_grpc.settings import environment, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kimball", description="Kimball analytics service")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the server")
    run.add_argument("--host", dest="grpc_host", help="address to listen on (default [::])")
    run.add_argument("--grpc-port", type=int, help="gRPC port (default 50051, env GRPC_PORT)")
    run.add_argument("--api-port", type=int, help="REST port (default 8080, env API_PORT)")
    run.add_argument("--data-dir", type=Path, help="local data directory (default kimball-data)")
    run.add_argument(
        "--config", type=Path, help="app.config file (env KIMBALL_CONFIG; /kimball/app.config)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
