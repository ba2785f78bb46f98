"""Table-driven tests of settings refused at start: readable case ids, one check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from kimball_grpc.config.settings import load_settings
from kimball_grpc.core.errors import ConfigError


def env_id(value: object) -> str:
    """A case's id from its environment (values cut to 12 characters)."""
    if isinstance(value, dict):
        return "-".join(f"{k}={x[:12]}" for k, x in value.items())
    return ""


def assert_refused(env: Mapping[str, str], fragments: Sequence[str]) -> None:
    """Loading ``env`` is refused with a message holding every fragment."""
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    for fragment in fragments:
        assert fragment in info.value.message
