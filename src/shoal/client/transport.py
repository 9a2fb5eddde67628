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
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from .errors import ShoalClientError

Reply = tuple[int, dict[str, str], bytes]
#: Requests sent again on a fresh connection when a kept-alive one turns out closed: never a
#: POST or PUT, which the server may have acted on (a load, a rollback) before the reset.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


#: Bytes of an error body a message quotes (an HTML error page is not a message).
MESSAGE_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Tls:
    """How a client checks the server (``cafile``: a CA to trust besides the system's) and,
    for a server started with ``--tls-ca``, the client certificate it presents."""

    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.cafile)
            if self.certfile:
                context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ShoalClientError(0, f"cannot use the TLS files: {exc}") from None
        return context

    def grpc_credentials(self) -> Any:
        """``grpc.ssl_channel_credentials`` (the system's roots when no CA file is given)."""
        import grpc

        def read(path: str | None) -> bytes | None:
            if not path:
                return None
            try:
                with open(path, "rb") as handle:
                    return handle.read()
            except OSError as exc:
                raise ShoalClientError(0, f"cannot read {path}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.cafile), private_key=read(self.keyfile or self.certfile),
            certificate_chain=read(self.certfile),
        )


def parse_url(url: str) -> SplitResult:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError:
        raise ShoalClientError(0, f"{url!r}: the port is not a number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ShoalClientError(0, f"{url!r} is not an http:// or https:// URL")
    return parts


class HttpTransport:
    def __init__(
        self, url: str, token: str | None = None, timeout: float = 30.0, cafile: str | None = None,
        tls: Tls | None = None,
    ) -> None:
        parts = parse_url(url)
        self.url = url.rstrip("/")
        self.base = parts.path.rstrip("/")
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        tls = tls or Tls(cafile)
        self._context = tls.context() if parts.scheme == "https" else None
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._connection: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        """(status, lower-cased headers, body); ShoalClientError(0, ...) when unreachable."""
        merged = {**self.headers, **(headers or {})}
        for attempt in (0, 1):
            reused = self._connection is not None
            connection = self._connection or self._connect()
            try:
                connection.request(method, self.base + path, body=body, headers=merged)
                response = connection.getresponse()
                content = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                if attempt == 0 and reused and method in _IDEMPOTENT:
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
