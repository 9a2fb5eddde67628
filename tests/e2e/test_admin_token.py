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


def test_control_routes_refuse_other_sites_pages(tmp_path: Path) -> None:
    """A page of another site cannot make a browser POST to the control routes (no token is
    set here: without this check, any page the user opens could unload their models)."""
    import httpx

    sklearn_iris(tmp_path / "iris" / "1")
    sklearn_iris(tmp_path / "iris" / "2")
    (tmp_path / "iris" / "model.yaml").write_text("version_policy: all\n")
    server = ShoalProcess(tmp_path)
    try:
        server.wait_ready()
        own = f"http://127.0.0.1:{server.http_port}"
        spec = {"stable": "1", "canary": {"variant": "2", "percent": 10}}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                            {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                            {"Origin": "http://127.0.0.1:1"}):
                reply = http.post("/v2/repository/models/iris/unload", headers=headers,
                                  content=b"{}")
                assert reply.status_code == 403, (headers, reply.text)
                assert "another site" in reply.json()["error"]
                assert http.put("/v2/models/iris/rollout", json=spec,
                                headers=headers).status_code == 403
                assert http.get("/v2/models/iris/ready").status_code == 200  # nothing happened
            assert http.get("/v2/models/iris/rollout").json()["state"] == "none"
            # The dashboard's own page, a typed-in request, and clients that are not browsers.
            assert http.put("/v2/models/iris/rollout", json=spec,
                            headers={"Origin": own, "Sec-Fetch-Site": "same-origin"}
                            ).status_code == 200
            assert http.post("/v2/models/iris/rollout/rollback",
                             headers={"Sec-Fetch-Site": "none"}).status_code == 200
            assert http.post("/v2/repository/models/iris/load").status_code == 200
    finally:
        assert server.stop() == 0
