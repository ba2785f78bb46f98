"""`kimball serve` as a real process on a damaged write-ahead log: it refuses to start,
naming the file and the offset, until the operator passes --wal-skip-damaged; and the
recovery flags refuse bad values."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from support.kimball_process import KIMBALL, read_until_listening, start, stop

from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc


@pytest.mark.parametrize("value", ["0", "101", "two", "-1"])
def test_serve_refuses_a_bad_snapshots_kept_flag(value: str) -> None:
    result = subprocess.run(
        [*KIMBALL, "serve", f"--snapshots-kept={value}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--snapshots-kept" in result.stderr and "from 1 to 100" in result.stderr


def test_a_log_damaged_in_the_middle_stops_start_up_until_the_operator_skips_it(
    tmp_path: Path,
) -> None:
    process = start("--grpc-port", "0", "--data-dir", str(tmp_path))
    try:
        port = read_until_listening(process).grpc_port
        token = (tmp_path / "api-token").read_text().strip()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.KimballServiceStub(channel)
            for batch in range(3):
                events = [pb.Event(event_name="e", user_id=f"u{batch}-{i}") for i in range(50)]
                stub.TrackEvents(
                    pb.TrackEventsRequest(events=events),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
    finally:
        process.send_signal(signal.SIGKILL)  # no snapshot: the log alone holds the events
        process.wait(timeout=20)
    (segment,) = (tmp_path / "wal").glob("*.wal")
    data = segment.read_bytes()
    segment.write_bytes(data[:40] + bytes([data[40] ^ 0x01]) + data[41:])  # the first batch

    refused = subprocess.run(
        [*KIMBALL, "serve", "--grpc-port", "0", "--api-port", "0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert f"cannot start: write-ahead log: {segment} is damaged at byte 0" in refused.stderr
    assert "records 1 to 50 cannot be read" in refused.stderr
    assert "--wal-skip-damaged" in refused.stderr

    skipping = start("--grpc-port", "0", "--data-dir", str(tmp_path), "--wal-skip-damaged")
    try:
        lines = "".join(read_until_listening(skipping).lines)
        assert "records 1 to 50 cannot be read and are skipped (--wal-skip-damaged)" in lines
        assert "50 records lost" in lines
        assert "100 records replayed from the write-ahead log, next record 151" in lines
    finally:
        assert stop(skipping) == 0
