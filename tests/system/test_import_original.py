"""``kimball import-original``: the original service's stored feature specs set on a real
server, by a real ``kimball`` process."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.kimball_process import KIMBALL, start, stop, token_config, wait_for_port
from support.original_state import ORIGINAL_DATA

from kimball_grpc.codec.erlang_external import encode_term
from kimball_grpc.codec.erlang_terms import Atom
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc

TOKEN = "import-original-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[str]:
    config = token_config(tmp_path, TOKEN)
    process = start("--grpc-port", "0", "--config", str(config), "--data-dir", str(tmp_path))
    try:
        yield f"127.0.0.1:{wait_for_port(process)}"
    finally:
        stop(process)


def kimball(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "KIMBALL_TARGET": target, "KIMBALL_TOKEN": TOKEN}
    return subprocess.run(
        [*KIMBALL, "import-original", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=environ,
    )


def specs(target: str) -> dict[str, pb.FeatureSpec]:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        listed = stub.ListFeatureSpecs(pb.ListFeatureSpecsRequest(), metadata=AUTH, timeout=5)
    return {spec.name: spec for spec in listed.specs}


def put(target: str, spec: pb.FeatureSpec) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.KimballServiceStub(channel)
        stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec), metadata=AUTH, timeout=5)


def test_the_originals_specs_are_set_those_set_here_kept_unless_replaced(target, tmp_path):
    put(target, pb.FeatureSpec(name="beta"))  # set here, off for all
    configmap = tmp_path / "configmap-data"  # kubectl get configmap ... -o jsonpath={.data.data}
    configmap.write_text(ORIGINAL_DATA)
    result = kimball(target, str(configmap))
    assert result.returncode == 0, result.stderr
    assert "kept beta: already set here" in result.stdout
    assert "2 of 3 feature specs imported" in result.stdout
    held = specs(target)
    assert set(held) == {"beta", "new-checkout", "off"} and not held["beta"].boolean
    assert held["new-checkout"].rollout_end.ToJsonString() == "2026-02-05T12:30:00Z"
    bucket_object = tmp_path / "features_store"  # as in S3 or GCS: term_to_binary, raw
    bucket_object.write_bytes(base64.b64decode(ORIGINAL_DATA))
    result = kimball(target, "--replace", str(bucket_object))
    assert result.returncode == 0, result.stderr
    assert "3 of 3 feature specs imported" in result.stdout
    assert specs(target)["beta"].boolean and specs(target)["beta"].user[0].property == "plan"


@pytest.mark.parametrize(
    ("term", "fragment"),
    [
        (
            {
                Atom("bloom"): (Atom("sbf"), 0.01, 0.85, 1, 0, []),
                Atom("tag_counts"): {},
                Atom("single_tag_counts"): {},
                Atom("value"): {},
            },
            "counters cannot be imported",
        ),
        (
            {Atom("feature_maps"): [{Atom("name"): b"ok"}, {Atom("name"): b""}]},
            "nothing imported: spec 2",
        ),
    ],
)
def test_a_counter_or_a_bad_spec_is_refused_changing_nothing(target, tmp_path, term, fragment):
    stored = tmp_path / "stored"
    stored.write_bytes(encode_term(term))
    result = kimball(target, str(stored))
    assert result.returncode == 1
    assert fragment in result.stderr
    assert specs(target) == {}
