"""What every unit test shares."""

from __future__ import annotations

import pytest

from kimball_grpc.config import settings as settings_module


@pytest.fixture(autouse=True)
def no_default_config_file(tmp_path, monkeypatch):
    """Never pick up a real /kimball/app.config from the machine running the tests."""
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.config")
