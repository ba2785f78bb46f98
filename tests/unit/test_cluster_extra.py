"""Cluster mode without its extra installed: a clear start-up error naming what to install,
not a traceback."""

from __future__ import annotations

import sys

import pytest

from kimball_grpc.cluster.event_log import NatsOptions, connect
from kimball_grpc.core.errors import ConfigError


async def test_without_the_nats_client_cluster_mode_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nats", None)  # as if nats-py were not installed
    with pytest.raises(ConfigError) as info:
        await connect(NatsOptions(("nats://127.0.0.1:1",), None, "replica-a"))
    assert "pip install 'kimball[cluster]'" in str(info.value)
