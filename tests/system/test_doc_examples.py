"""Every shell example of README.md and docs/*.md, run as copied against a live server.

What is run: each fenced block tagged ``sh`` (other tags, such as ``console`` or none,
are for output and are not run), in document order, one fresh ``kimball serve`` per
document, each block in its own ``bash -eo pipefail`` in a directory like the reader's
checkout: ``kimball-data`` is the server's data directory (``api-token`` in it),
``.venv/bin/kimball`` is this Kimball, and ``KIMBALL_TOKEN`` is set as the README's
``export`` sets it. The ports the docs use (gRPC 50051 and REST 8080, a sidecar's 50061
and 8081) are replaced by free ones, and the server is told by ``KIMBALL_TARGET``.
``curl`` fails on an HTTP error status, as a reader would see one. A bare ``kimball``
is not on PATH (the reader has no activated venv either).

A block that cannot run here carries a comment on the line before its fence:

- ``<!-- doc-test: skip: REASON -->``: not run, the reason shown (Docker, Kubernetes,
  a bucket, a build, minutes of benchmark);
- ``<!-- doc-test: background -->``: a server that runs until the document's
  examples end; the next block runs once every port it names answers;
- ``<!-- doc-test: follows -->``: a stream that runs until Ctrl-C: it must still be
  running, with no error, after a moment.

A block needing a tool that is not installed (grpcurl, jq) is skipped, the test saying
so. An example that fails prints its document and line, its output, and what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.kimball_process import read_until_listening, start_command, stop

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<tag>[\w-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<kind>[\w-]+)(?::\s*(?P<reason>.*?))?\s*-->\s*$")
MARKERS = ("skip", "background", "follows")
# A command line of an example: what must be in a block that runs (or is marked).
COMMAND = re.compile(r"^\s*(?:\$\s+)?(?:[A-Z_]+=\S*\s+)*(?:curl|grpcurl|(?:\S*/)?kimball)\s")
SHELL_LIKE = ("", "console", "text", "shell", "bash", "zsh")  # tags a command may hide in
TOOLS = ("grpcurl", "jq")  # tools a reader may lack: their examples skip, saying so
DOC_PORTS = ("50051", "8080", "50061", "8081")  # gRPC, REST; a second server's
DOC_PORT = re.compile(rf"(?<![\d.])({'|'.join(DOC_PORTS)})(?!\d)")
BLOCK_SECONDS = 60
FOLLOW_SECONDS = 2.0  # how long a following stream must keep running


@dataclass(frozen=True)
class Block:
    """One fenced block: where it starts, its tag, its text and the marker before it."""

    document: Path
    line: int
    tag: str
    text: str
    marker: str = ""
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    """The fenced blocks of ``document`` (indented ones, in lists, too)."""
    lines = document.read_text().splitlines()
    found = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = _end_of_block(lines, index)
        indent = len(opening["indent"])
        text = "\n".join(line[indent:] for line in lines[index + 1 : end])
        marker = MARKER.match(lines[index - 1]) if index > 0 else None
        kind, reason = (marker["kind"], marker["reason"] or "") if marker else ("", "")
        found.append(Block(document, index + 1, opening["tag"], text, kind, reason))
        index = end + 1
    return found


def _end_of_block(lines: list[str], start: int) -> int:
    for index in range(start + 1, len(lines)):
        if lines[index].strip() == "```":
            return index
    raise AssertionError(f"line {start + 1}: a fence that is never closed")


def every_block() -> list[Block]:
    return [block for document in DOCUMENTS for block in blocks(document)]


def shell_blocks() -> list[Block]:
    return [block for block in every_block() if block.tag == "sh"]


def test_every_example_is_in_an_sh_block_and_every_marker_is_known() -> None:
    """A command outside an ``sh`` block would never be run; a misspelt marker would
    silently run (or skip) a block; a skip needs its reason."""
    problems = []
    for document in DOCUMENTS:
        text = document.read_text()
        for block in blocks(document):
            commands = [line for line in block.text.splitlines() if COMMAND.match(line)]
            if block.tag in SHELL_LIKE and commands:
                problems.append(f"{block.where}: a command in a ```{block.tag} block: tag it sh")
        for number, line in enumerate(text.splitlines(), 1):
            marker = MARKER.match(line)
            if marker and marker["kind"] not in MARKERS:
                problems.append(f"{document.name}:{number}: unknown marker {marker['kind']!r}")
            if marker and marker["kind"] == "skip" and not marker["reason"]:
                problems.append(f"{document.name}:{number}: a skip without its reason")
    for block in shell_blocks():
        for line in block.text.splitlines():
            if re.match(r"^\s*(?:[A-Z_]+=\S*\s+)*kimball\s", line):
                problems.append(
                    f"{block.where}: a bare `kimball` needs an activated venv: "
                    "write .venv/bin/kimball"
                )
    assert not problems, "\n".join(problems)


def test_the_docs_have_runnable_examples() -> None:
    """The selection itself works: it finds the README's and the API's examples."""
    run = [block for block in shell_blocks() if block.marker != "skip"]
    assert {block.document.name for block in run} >= {"README.md", "api.md", "operations.md"}
    assert any("grpcurl" in block.text for block in run)
    assert any(".venv/bin/kimball" in block.text for block in run)


@dataclass
class Reader:
    """A reader's working directory and shell, with a server of their own."""

    directory: Path
    environment: dict[str, str]
    ports: dict[str, str]
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    ran: set[int] = field(default_factory=set)  # the lines of the blocks run so far

    def copied(self, text: str) -> str:
        """``text`` with the docs' ports replaced by this reader's."""
        return DOC_PORT.sub(lambda port: self.ports[port[0]], text)

    def shell(self, text: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", "-eo", "pipefail", "-c", self.copied(text)],
            cwd=self.directory,
            env=self.environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its whole process group is stopped at the end
        )


def _free_port() -> str:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return str(listener.getsockname()[1])


def _reader_path(bin_dir: Path) -> str:
    """PATH for the examples: curl failing on an HTTP error, grpcurl if installed, and
    the system's tools; not this venv's bin (no bare ``kimball``)."""
    venv_bin = Path(sys.executable).parent
    system = [p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != venv_bin]
    curl = shutil.which("curl", path=os.pathsep.join(system))
    if curl:
        wrapper = bin_dir / "curl"
        wrapper.write_text(f'#!/bin/sh\nexec {curl} --fail-with-body --silent --show-error "$@"\n')
        wrapper.chmod(0o755)
    grpcurl = shutil.which("grpcurl", path=os.pathsep.join([str(venv_bin), *system]))
    if grpcurl:
        (bin_dir / "grpcurl").symlink_to(grpcurl)
    return os.pathsep.join([str(bin_dir), *system])


@pytest.fixture(scope="module")
def readers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Path, Reader]]:
    """A reader per document, made when its first example runs."""

    def make(document: Path) -> Reader:
        directory = tmp_path_factory.mktemp(document.stem)
        (directory / ".venv").symlink_to(sys.prefix)
        bin_dir = directory / "reader-bin"
        bin_dir.mkdir()
        server = start_command(
            "serve", "--grpc-port", "0", "--api-port", "0",
            "--data-dir", str(directory / "kimball-data"),
        )  # fmt: skip
        listening = read_until_listening(server)
        grpc_port, rest_port = str(listening.grpc_port), str(listening.rest_port)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("KIMBALL_")}
        environment |= {
            "PATH": _reader_path(bin_dir),
            "KIMBALL_TARGET": f"127.0.0.1:{grpc_port}",  # the default, 127.0.0.1:50051
            "KIMBALL_TOKEN": (directory / "kimball-data" / "api-token").read_text().strip(),
        }
        ports = dict(
            zip(DOC_PORTS, [grpc_port, rest_port, _free_port(), _free_port()], strict=True)
        )
        return Reader(directory, environment, ports, [server])

    class Readers(dict[Path, Reader]):
        def __missing__(self, document: Path) -> Reader:
            self[document] = make(document)
            return self[document]

    made = Readers()
    try:
        yield made
    finally:
        for reader in made.values():
            for process in reversed(reader.processes):
                if process.args[:1] == ["bash"]:
                    _stop_group(process)
                else:
                    stop(process)


def _stop_group(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _missing_tool(block: Block, path: str) -> str | None:
    for tool in TOOLS:
        used = re.search(rf"(?:^|[\s|;(]){tool}\s", block.text, re.MULTILINE)
        if used and shutil.which(tool, path=path) is None:
            return tool
    return None


def _advice(block: Block) -> str:
    return (
        f"\n{block.where} fails as copied. Fix the example (or the code) so that a reader's "
        "copy works; if it cannot run against a local server, put "
        "<!-- doc-test: skip: REASON --> on the line before its fence "
        "(tests/system/test_doc_examples.py says which markers there are)."
    )


@pytest.mark.xdist_group("doc_examples")  # in document order, sharing the servers
@pytest.mark.parametrize("block", shell_blocks(), ids=lambda block: block.where)
def test_the_example_runs_as_copied(block: Block, readers: dict[Path, Reader]) -> None:
    if block.marker == "skip":
        pytest.skip(f"{block.where}: marked: {block.reason}")
    reader = readers[block.document]
    tool = _missing_tool(block, reader.environment["PATH"])
    if tool is not None:
        pytest.skip(f"{block.where}: {tool} is not installed: not run")
    _catch_up(block, reader)
    process = reader.shell(block.text)
    if block.marker == "background":
        _in_background(block, process, reader)
        return
    if block.marker == "follows":
        reader.processes.append(process)
        try:
            output, _ = process.communicate(timeout=FOLLOW_SECONDS)
        except subprocess.TimeoutExpired:
            return  # still following, as it should
        assert process.returncode == 0, output + _advice(block)
        return
    try:
        output, _ = process.communicate(timeout=BLOCK_SECONDS)
    except subprocess.TimeoutExpired:
        _stop_group(process)
        pytest.fail(f"still running after {BLOCK_SECONDS} s" + _advice(block))
    assert process.returncode == 0, f"exit {process.returncode}:\n{output}" + _advice(block)


def _catch_up(block: Block, reader: Reader) -> None:
    """Run the blocks before ``block`` that have not run on this reader's server (pytest-xdist
    may run the tests out of order), each checked in its own test: an example may use
    what the ones before it made."""
    reader.ran.add(block.line)
    for earlier in blocks(block.document):
        if earlier.line >= block.line:
            return
        nothing_for_later = earlier.marker in ("skip", "follows")
        if earlier.tag != "sh" or earlier.line in reader.ran or nothing_for_later:
            continue
        if _missing_tool(earlier, reader.environment["PATH"]) is None:
            reader.ran.add(earlier.line)
            process = reader.shell(earlier.text)
            if earlier.marker == "background":
                _in_background(earlier, process, reader)
            else:
                process.communicate(timeout=BLOCK_SECONDS)


def _in_background(block: Block, process: subprocess.Popen[str], reader: Reader) -> None:
    """``block``'s server running, until every port it names answers."""
    reader.processes.append(process)
    _wait_for_ports(process, re.findall(DOC_PORT, block.text), reader)


def _wait_for_ports(process: subprocess.Popen[str], ports: list[str], reader: Reader) -> None:
    """Until every port of ``ports`` (the docs' numbers) accepts connections."""
    deadline = time.monotonic() + 30
    for port in ports:
        mine = int(reader.ports[port])
        while True:
            if process.poll() is not None:
                output = process.communicate()[0]
                pytest.fail(f"the background example exited: {output}")
            try:
                socket.create_connection(("127.0.0.1", mine), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"nothing listens on {port} in time"
                time.sleep(0.05)
