"""`kimball serve --config` on the original's own config files, as a real process: it
starts with warnings only, applies what has a meaning here and refuses a typo."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

from support.kimball_process import KIMBALL, read_until_listening, start, stop

ORIGINAL = Path(__file__).resolve().parents[1] / "fixtures" / "original"


def rest(port: int, path: str, body: object = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
        return response.status, json.loads(text) if text else None


def test_the_originals_sys_config_and_its_include_start_kimball_with_warnings_only(
    tmp_path: Path,
) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(ORIGINAL, checkout)
    data_dir = tmp_path / "data"
    process = start(
        "--grpc-port", "0", "--data-dir", str(data_dir), "--config", str(checkout / "sys.config")
    )
    try:
        listening = read_until_listening(process)
        logged = listening.lines
        assert not [line for line in logged if " ERROR " in line or "Traceback" in line]
        warnings = [line.split(": ", 1)[1].strip() for line in logged if " WARNING " in line]
        assert warnings == [
            "ignoring settings of the original that have no use in Kimball: "
            f"local_dev ({checkout / 'sys.config'}:12)",
            "API authentication is off (api_auth disable): every caller is trusted",
        ]
        # {api_auth, disable} from sys.config applies: no token needed.
        port = listening.rest_port
        assert rest(port, "/v0/analytics", {"event_name": "signup", "user_id": "u1"})[0] == 204
        status, analytics = rest(port, "/v0/analytics")
        assert status == 200
        assert {c["name"]: c["count"] for c in analytics["counts"]}["signup"] == 1
        assert stop(process) == 0
    finally:
        process.kill()
        process.wait()
    # file_store_path ("features.json", next to sys.config): where the snapshots went; the
    # write-ahead log stays in the data directory.
    assert list((checkout / "features.json").rglob("*.snapshot"))
    assert not (data_dir / "objects").exists()
    assert list((data_dir / "wal").iterdir())


def test_a_typo_in_the_included_file_stops_start_up_naming_it_and_the_known_name(
    tmp_path: Path,
) -> None:
    shutil.copytree(ORIGINAL, tmp_path, dirs_exist_ok=True)
    local = tmp_path / "local.config"
    local.write_text(local.read_text().replace("counter_startup_delay", "counter_start_delay"))
    result = subprocess.run(
        [*KIMBALL, "serve", "--grpc-port", "0", "--config", str(tmp_path / "sys.config")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"kimball: {local}:5: setting counter_start_delay: unknown setting; "
        "did you mean counter_startup_delay?"
    )
