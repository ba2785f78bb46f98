"""The package as users get it, and the container image's steps without a Docker daemon.

`python -m build` makes the sdist and then the wheel from that sdist alone (so the sdist
must carry all the build needs); the Dockerfile's own install command puts the wheel into
a fresh virtual environment; its ENTRYPOINT and CMD, with its ENV, start the server from a
directory outside the checkout; its HEALTHCHECK command must pass. Each of these is read
from the Dockerfile, so the image and this test cannot drift apart.
"""

from __future__ import annotations

import email
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.kimball_process import read_until_listening, stop
from support.nats_server import NatsServer
from support.polling import until
from support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]

# One worker builds once and runs these, beside the rest of the suite.
pytestmark = pytest.mark.xdist_group("wheel_install")


@dataclass(frozen=True)
class Image:
    """What the Dockerfile's runtime stage says about running Kimball."""

    install: str  # the shell command installing the wheels from /wheels
    env: dict[str, str]
    command: list[str]  # ENTRYPOINT then CMD
    health_check: list[str]
    stop_signal: signal.Signals


def runtime_stage(dockerfile: str) -> Image:
    """The last stage's install command, ENV, ENTRYPOINT + CMD, HEALTHCHECK command and
    STOPSIGNAL."""
    instructions: list[tuple[str, str]] = []
    for line in dockerfile.replace("\\\n", "").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    stage: dict[str, list[str]] = {}
    for keyword, arguments in instructions[last_from:]:
        stage.setdefault(keyword, []).append(arguments)
    installs = [run for run in stage["RUN"] if "pip install" in run]
    assert len(installs) == 1, f"one install command in the runtime stage, got {installs}"
    install = re.sub(r"^(--\S+\s+)+", "", installs[0])  # RUN's own options (--mount=...)
    env = dict(word.split("=", 1) for arguments in stage["ENV"] for word in shlex.split(arguments))
    _, _, health = stage["HEALTHCHECK"][0].partition("CMD ")
    return Image(
        install=install,
        env=env,
        command=json.loads(stage["ENTRYPOINT"][0]) + json.loads(stage["CMD"][0]),
        health_check=json.loads(health),
        stop_signal=signal.Signals[stage["STOPSIGNAL"][0]],
    )


IMAGE = runtime_stage((ROOT / "Dockerfile").read_text())
# What .gitignore keeps out of a clone, but the generated code.
NOT_IN_A_CLONE = [".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", ".*_cache"]
NOT_IN_A_CLONE += ["test-artifacts", "kimball-data", ".schemathesis", "*.so"]
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--quiet"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel built from it, as ``python -m build`` makes them."""
    # From a copy of the checkout as a clone has it, plus the generated code an install
    # left (the sdist must leave it out): setuptools adds the files an old *.egg-info lists
    # to the sdist, which would hide a file missing from MANIFEST.in.
    source = tmp_path_factory.mktemp("checkout") / "kimball"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def only(directory: Path, pattern: str) -> Path:
    [path] = directory.glob(pattern)
    return path


def only_name(names: set[str], suffix: str) -> str:
    [name] = [name for name in names if name.endswith(suffix)]
    return name


def test_wheel_holds_the_generated_code_the_readme_and_the_web_ui(dist: Path) -> None:
    with zipfile.ZipFile(only(dist, "kimball-*.whl")) as wheel:
        names = set(wheel.namelist())
        metadata = email.message_from_bytes(wheel.read(only_name(names, ".dist-info/METADATA")))
    generated = "kimball_grpc/generated/"
    for module in ("kimball/v1/kimball_pb2", "kimball/v1/relay_pb2", "features_proto_pb2"):
        assert {f"{generated}{module}.py", f"{generated}{module}_grpc.py"} <= names
        assert f"{generated}{module}.pyi" in names
    assert f"{generated}kimball/storage/v1/state_pb2.py" in names
    web = {f"gateway/web/{path.name}" for path in (ROOT / "gateway" / "web").iterdir()}
    assert web and web <= names
    assert {f"{package}/py.typed" for package in ("kimball_grpc", "gateway", "storage")} <= names
    assert metadata.get_payload() == (ROOT / "README.md").read_text()
    assert metadata["Description-Content-Type"] == "text/markdown"


def test_wheel_holds_the_c_modules_built_for_this_platform(dist: Path) -> None:
    wheel = only(dist, "kimball-*.whl")
    with zipfile.ZipFile(wheel) as opened:
        names = set(opened.namelist())
    built = sorted(name.split(".")[0] for name in names if name.endswith(".so"))
    assert built == ["kimball_grpc/codec/_event_reader", "kimball_grpc/core/_bloombits"]
    assert not any(name.endswith(".c") for name in names)
    assert not wheel.name.endswith("-none-any.whl"), wheel.name


def test_sdist_ships_the_protos_not_code_generated_in_a_checkout(dist: Path) -> None:
    with tarfile.open(only(dist, "kimball-*.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"protos/compile_protos.py", "protos/kimball/v1/kimball.proto", "MANIFEST.in"} <= names
    assert not any(name.startswith("kimball_grpc/generated") for name in names)
    assert {"kimball_grpc/core/_bloombits.c", "kimball_grpc/codec/_event_reader.c"} <= names
    assert not any(name.endswith(".so") for name in names)


@dataclass(frozen=True)
class Installed:
    """The wheel installed as the image installs it, in a fresh venv, and how to run it
    from outside the checkout."""

    venv: Path
    env: dict[str, str]  # no PYTHONPATH, the venv first on PATH
    outside: Path  # a directory away from the checkout


# The extras the image installs, read from its install command (`...whl)[a,b]"`).
IMAGE_EXTRAS = re.search(r"\.whl\)(\[[a-z,]+\])", IMAGE.install)


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    assert IMAGE_EXTRAS is not None, IMAGE.install
    tmp_path = tmp_path_factory.mktemp("installed")
    # The builder stage's wheelhouse: Kimball's wheel and every dependency's.
    wheels = tmp_path / "wheels"
    collected = subprocess.run(
        [
            *PIP_WHEEL,
            "--wheel-dir",
            str(wheels),
            f"{only(dist, 'kimball-*.whl')}{IMAGE_EXTRAS.group(1)}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert collected.returncode == 0, collected.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # Nothing of the checkout is on the path: another directory, no PYTHONPATH, venv first.
    base_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    base_env["PATH"] = f"{venv / 'bin'}{os.pathsep}{base_env['PATH']}"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    install = IMAGE.install.replace("/wheels", str(wheels))
    installed = subprocess.run(
        ["sh", "-c", install],
        cwd=outside,
        # As in the image, where there is no compiler: any build from source would fail.
        env=base_env | {"CC": "false", "CXX": "false"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return Installed(venv, base_env, outside)


def test_installed_wheel_starts_and_passes_the_image_health_check(
    installed: Installed, tmp_path: Path
) -> None:
    venv, base_env, outside = installed.venv, installed.env, installed.outside
    located = subprocess.run(
        [
            "python",
            "-c",
            "import kimball_grpc.generated.kimball.v1.kimball_pb2 as m; print(m.__file__)\n"
            "import kimball_grpc.core._bloombits as c; print(c.__file__)",
        ],
        cwd=outside,
        env=base_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert located.returncode == 0, located.stderr
    for module in located.stdout.split():
        assert Path(module).is_relative_to(venv), module

    # The image's environment, with this test's own ports and data directory.
    assert {"GRPC_PORT", "API_PORT", "KIMBALL_DATA_DIR"} <= IMAGE.env.keys()
    env = base_env | IMAGE.env
    env |= {
        "GRPC_PORT": str(free_port()),
        "API_PORT": str(free_port()),
        "KIMBALL_DATA_DIR": str(tmp_path / "data"),
    }
    # On loopback, like every server the tests start.
    server = subprocess.Popen(
        [*IMAGE.command, "--host", "127.0.0.1"],
        cwd=outside,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        listening = read_until_listening(server, deadline=60)
        assert (listening.grpc_port, listening.rest_port) == (
            int(env["GRPC_PORT"]),
            int(env["API_PORT"]),
        )
        health = subprocess.run(
            IMAGE.health_check, cwd=outside, env=env, capture_output=True, text=True, timeout=60
        )
        assert health.returncode == 0, health.stdout + health.stderr
        assert health.stdout.splitlines() == [
            "SERVING",
            f"http://127.0.0.1:{env['API_PORT']}/ready: HTTP 200",
        ]
        # `docker stop` sends the STOPSIGNAL: in-flight calls finish, a last snapshot, exit 0.
        server.send_signal(IMAGE.stop_signal)
        assert server.wait(timeout=30) == 0
    finally:
        stop(server)
    assert (tmp_path / "data" / "api-token").exists()


async def test_installed_wheel_runs_a_cluster_replica_over_ipv6(
    installed: Installed, tmp_path: Path
) -> None:
    """The image's install carries cluster mode's NATS client: a replica of that install,
    on ::1 with a NATS server on ::1, takes events and answers from its partitions (asked
    of itself over gRPC at its advertised ``[::1]:port``)."""
    with NatsServer(host="::1") as nats:
        rest_port = free_port()
        flags = {
            "--host": "::1",
            "--grpc-port": free_port(),
            "--api-port": rest_port,
            "--data-dir": tmp_path / "data",
            "--nats-url": nats.url,
            "--nats-stream-replicas": 1,
            "--partitions": 4,
            "--replica-id": "wheel-0",
        }
        replica = subprocess.Popen(
            ["kimball", "serve", *(str(part) for flag in flags.items() for part in flag)],
            cwd=installed.outside,
            env=installed.env | {"KIMBALL_API_TOKENS": "wheel-token"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            read_until_listening(replica, deadline=60)
            base = f"http://[::1]:{rest_port}"
            auth = {"Authorization": "Bearer wheel-token", "Content-Type": "application/json"}
            users = [{"event_name": "signup", "user_id": f"u{i}"} for i in range(20)]
            sent = urllib.request.Request(
                f"{base}/v0/analytics", json.dumps(users).encode(), auth, method="POST"
            )
            with urllib.request.urlopen(sent, timeout=30) as answer:
                assert answer.status == 204

            def signups() -> int | None:
                query = urllib.request.Request(f"{base}/v0/analytics?namespace=default", None, auth)
                try:
                    with urllib.request.urlopen(query, timeout=30) as answer:
                        counts = json.loads(answer.read())["counts"]
                except urllib.error.HTTPError as refused:  # 503 while partitions are claimed
                    assert refused.code == 503, refused.read()
                    return None
                return next((c["count"] for c in counts if c["name"] == "signup"), None)

            await until(lambda: signups() == 20, "the 20 signups counted", 60, interval=0.2)
            replica.send_signal(signal.SIGTERM)
            assert replica.wait(timeout=30) == 0
        finally:
            stop(replica)
