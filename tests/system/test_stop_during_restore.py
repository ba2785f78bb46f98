"""``kimball serve`` as a real process, stopped with SIGTERM while it restores its state."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from support.in_process import local_settings, running, stub_of
from support.kimball_process import read_until_listening, start
from support.state import feed


async def test_sigterm_during_a_slow_restore_stops_the_process_promptly(tmp_path: Path):
    async with running(local_settings(tmp_path)) as server, stub_of(server) as stub:
        await feed(stub, range(30))  # a snapshot of three counters at shutdown
    config = tmp_path / "app.config"
    config.write_text("[{features, [{api_auth, disable}, {counter_startup_delay, 5000}]}].\n")

    process = start("--grpc-port", "0", "--data-dir", str(tmp_path), "--config", str(config))
    try:
        read_until_listening(process, ready=False)  # restoring: 5 s per counter from here
        started = time.monotonic()
        process.terminate()
        code = await asyncio.to_thread(process.wait, 30)
        assert code == 0
        assert time.monotonic() - started < 4.5  # less than one pause: not the whole restore
    finally:
        if process.poll() is None:
            process.kill()
