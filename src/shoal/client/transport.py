"""A small synchronous HTTP transport for the clients, on the standard library.

The ``shoal`` client commands start a Python process per call, and the whole round trip is
meant to take well under 300 ms: ``http.client`` imports in a few milliseconds where a full
HTTP library takes about 0.2 s. One keep-alive connection per transport, reopened once if
the server closed it between requests; HTTPS with a CA file for a server started with
``--tls-cert``.
"""

from __future__ import annotations

import http.client
import ssl
from urllib.parse import urlsplit

from .errors import ShoalClientError

Reply = tuple[int, dict[str, str], bytes]


class HttpTransport:
    def __init__(
        self, url: str, token: str | None = None, timeout: float = 30.0, cafile: str | None = None
    ) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ShoalClientError(0, f"{url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.base = parts.path.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._context = ssl.create_default_context(cafile=cafile) if parts.scheme == "https" else None
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._connection: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        """(status, lower-cased headers, body); ShoalClientError(0, ...) when unreachable."""
        merged = {**self.headers, **(headers or {})}
        for attempt in (0, 1):
            connection = self._connection or self._connect()
            try:
                connection.request(method, self.base + path, body=body, headers=merged)
                response = connection.getresponse()
                content = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                if attempt == 0:
                    continue  # a keep-alive connection the server had closed: once more
                raise ShoalClientError(0, f"cannot reach {self.url}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise ShoalClientError(0, f"cannot reach {self.url}: {exc}") from None
            if response.will_close:
                self.close()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, content
        raise AssertionError("unreachable")

    def _connect(self) -> http.client.HTTPConnection:
        if self._context is not None:
            self._connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._context
            )
        else:
            self._connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
