"""What every benchmark script does before it measures: its command line (sizes that
``--quick`` makes smaller), the run's header, and where the processes run (CPU pinning)."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from workload import BATCH  # a bench module next to this one

import kimball_grpc

ROOT = Path(__file__).resolve().parent.parent


# -- the command line -----------------------------------------------------------------------


class Options(Protocol):
    """Where options go: a parser or one of its groups."""

    def add_argument(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Size:
    """An option's default, and the smaller one of a smoke run (``--quick``)."""

    default: float | str
    quick: float | str

    def __str__(self) -> str:  # as %(default)s in the option's help
        def text(value: float | str) -> str:
            return f"{value:,}" if isinstance(value, int | float) else value

        return f"{text(self.default)}; --quick {text(self.quick)}"


def new_parser(
    doc: str, *, users: tuple[int, int] | None, rounds: tuple[int, int]
) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of the script's docstring, with the workload's
    options: --users (unless the script draws its users otherwise), --names, --rounds, --seed;
    ``users`` and ``rounds`` are (default, under --quick)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    if users is not None:
        add_size(parser, "--users", *users, "users in the workload")
    parser.add_argument("--names", type=int, default=20, help="event names in the workload")
    add_size(parser, "--rounds", *rounds, "interleaved rounds")
    parser.add_argument("--seed", type=int, default=20240515)
    return parser


def add_size(
    parser: Options, flag: str, default: float | str, quick: float | str, help: str
) -> None:
    """An option of the type of ``default``, which ``--quick`` changes to ``quick``."""
    size = Size(default, quick)
    parser.add_argument(flag, type=type(default), default=size, help=f"{help} (%(default)s)")


def add_server_options(
    parser: Options, servers: str = "the servers' CPU", batch: str | None = None
) -> None:
    """Options of a script that measures servers: where they and the load generator run
    (--server-cpu, --client-cpu, --no-pin) and, given its help, --batch (events per request)."""
    parser.add_argument("--server-cpu", type=int, default=1, help=servers)
    parser.add_argument("--client-cpu", type=int, default=0, help="the load generator's CPU")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    if batch is not None:
        parser.add_argument("--batch", type=int, default=BATCH, help=batch)


def add_parts(parser: argparse.ArgumentParser, parts: dict[str, str]) -> list[Options]:
    """An option group for each part of the run (key: title), in order, and --skip: a comma
    list of the keys of parts not to run (a set once parsed; an unknown key is an error)."""

    def keys(text: str) -> set[str]:
        chosen = set(filter(None, text.split(",")))
        if chosen - parts.keys():
            raise argparse.ArgumentTypeError(f"the parts are {','.join(parts)}")
        return chosen

    help = f"comma list of parts to skip: {','.join(parts)}"
    parser.add_argument("--skip", type=keys, default=set(), help=help)
    return [parser.add_argument_group(title) for title in parts.values()]


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse; a size not given on the command line becomes its default, or its quick value
    under ``--quick``."""
    args = parser.parse_args(argv)
    for name, value in vars(args).items():
        if isinstance(value, Size):
            setattr(args, name, value.quick if args.quick else value.default)
    return args


# -- the header -----------------------------------------------------------------------------


def machine_note() -> str:
    versions = ", ".join(
        f"{p} {metadata.version(p)}" for p in ("grpcio", "protobuf", "mmh3", "bitarray", "rbloom")
    )
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores "
        f"({cpus} usable), {platform.machine()}; {versions}"
    )


def code_note(*folders: str) -> str:
    """The commit measured, and the uncommitted changes in kimball_grpc/ and ``folders``."""
    package = Path(kimball_grpc.__file__).resolve().parent
    if package != ROOT / "kimball_grpc":
        return f"kimball_grpc from {package}"

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", "kimball_grpc", *folders)
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    changed = ", ".join(line[3:] for line in dirty.splitlines() if line.strip())
    return f"commit {commit}" + (f" + uncommitted changes in {changed}" if changed else "")


def print_header(script: str, *folders: str, note: str = "") -> None:
    """The run's first lines: the script and the machine (``note`` added), the code measured
    (uncommitted changes in kimball_grpc/ and ``folders`` named), the command line."""
    print(f"# {script}  ({machine_note()}{note})")
    print(f"code: {code_note(*folders)}")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")


# -- CPUs -----------------------------------------------------------------------------------


def can_pin(cpus: set[int]) -> bool:
    return hasattr(os, "sched_setaffinity") and cpus <= os.sched_getaffinity(0)


def pin_load_generator(args: argparse.Namespace, cpus: set[int]) -> bool:
    """Pin this process to ``--client-cpu`` unless ``--no-pin`` or ``cpus`` are not all
    usable; whether it did (then the servers go on their CPUs too)."""
    pin = not args.no_pin and can_pin(cpus)
    if pin:
        os.sched_setaffinity(0, {args.client_cpu})
    return pin


def start_run(args: argparse.Namespace, script: str, *folders: str, note: str = "") -> int | None:
    """Print the run's header and pin the load generator; the CPU for servers (or None)."""
    print_header(script, *folders, note=note)
    pin = pin_load_generator(args, {args.server_cpu, args.client_cpu})
    print(
        f"servers pinned to CPU {args.server_cpu}, load generator to CPU {args.client_cpu}"
        if pin
        else "not pinned (need two usable CPUs)"
    )
    return args.server_cpu if pin else None


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run the block on ``cpu`` (the server's), then go back."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
