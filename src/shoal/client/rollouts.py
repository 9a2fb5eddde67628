"""Steer a running server's rollouts over its REST API (``/v2/models/{m}/rollout``).

    from shoal.client import RolloutClient

    rollouts = RolloutClient("http://127.0.0.1:8080", token=None)
    rollouts.set("iris", {"stable": "2", "canary": {"variant": "3", "percent": 10}})
    print(rollouts.status("iris")["variants"]["canary"]["requests"])
    rollouts.promote("iris")
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from .errors import ShoalClientError
from .inference import DEFAULT_URL, json_object
from .transport import HttpTransport, Tls

__all__ = ["DEFAULT_URL", "RolloutClient", "ShoalClientError"]


class RolloutClient:
    def __init__(
        self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0,
        cafile: str | None = None, certfile: str | None = None, keyfile: str | None = None,
    ) -> None:
        self._http = HttpTransport(url, token, timeout, tls=Tls(cafile, certfile, keyfile))
        self.url = url

    def status(self, model: str) -> dict[str, Any]:
        return self._call("GET", model)

    def set(self, model: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", model, json=spec)

    def promote(self, model: str) -> dict[str, Any]:
        return self._call("POST", model, "/promote")

    def rollback(self, model: str) -> dict[str, Any]:
        return self._call("POST", model, "/rollback")

    def pause(self, model: str) -> dict[str, Any]:
        return self._call("POST", model, "/pause")

    def resume(self, model: str) -> dict[str, Any]:
        return self._call("POST", model, "/resume")

    def delete(self, model: str) -> dict[str, Any]:
        return self._call("DELETE", model)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RolloutClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, model: str, suffix: str = "", json: Any = None) -> dict[str, Any]:
        path = f"/v2/models/{quote(model, safe='')}/rollout{suffix}"
        body = None if json is None else orjson.dumps(json)
        headers = {"Content-Type": "application/json"} if body is not None else None
        status, _, content = self._http.request(method, path, body, headers)
        return json_object(status, content)
