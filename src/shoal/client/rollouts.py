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

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"


class ShoalClientError(Exception):
    """The server refused (``status`` is its HTTP status) or could not be reached (0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RolloutClient:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
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
        try:
            response = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise ShoalClientError(0, f"cannot reach {self.url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text.strip() or response.reason_phrase}
        if response.status_code != 200:
            message = body.get("error") if isinstance(body, dict) else None
            raise ShoalClientError(response.status_code, str(message or body))
        return body
