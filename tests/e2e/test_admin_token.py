"""Binding beyond loopback without an admin token is allowed, and said out loud: the
control routes (repository, rollouts, the dashboard's buttons) are then open to the network."""

from __future__ import annotations

from pathlib import Path

import pytest

from .models import sklearn_iris
from .process import ShoalProcess


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_open_control_routes_on_the_network_are_warned_about(tmp_path: Path, token: str | None) -> None:
    sklearn_iris(tmp_path / "iris" / "1")
    args = ["--host", "0.0.0.0"] + (["--admin-token", token] if token else [])
    server = ShoalProcess(tmp_path, *args)
    try:
        server.wait_ready()
    finally:
        assert server.stop() == 0
    warnings = [e for e in server.log_events() if e["event"] == "control_routes_open"]
    if token is None:
        assert len(warnings) == 1 and warnings[0]["host"] == "0.0.0.0"
        assert "--admin-token" in warnings[0]["detail"]
    else:
        assert warnings == []
