"""The admin token that protects control routes: repository load/unload and rollout changes.

With ``--admin-token`` (``SHOAL_ADMIN_TOKEN``) set, those routes need
``Authorization: Bearer <token>`` (gRPC: the same ``authorization`` metadata) and answer 401
(UNAUTHENTICATED) without it; inference, health, metadata and status stay open. Without a
token they are open, which is fine on 127.0.0.1 (the default bind) and logged as a warning
on any other address.

Over REST they also refuse (403) a request a browser sent from another site's page: without
that, any page a user opens could POST to a server on their machine (the dashboard makes the
routes worth aiming at). Browsers say where a request comes from (``Sec-Fetch-Site``,
``Origin``); clients that are not browsers send neither and are not affected.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

from urllib.parse import urlsplit

from ..errors import Forbidden, Unauthorized

SCHEME = "bearer "


class AdminToken:
    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check_request(self, headers: Any) -> None:
        """A REST control request: not from another site's page, and with the token."""
        refuse_cross_site(headers)
        self.check(headers.get("authorization"))

    def check(self, authorization: str | None) -> None:
        """Raise 401 unless ``authorization`` is ``Bearer <token>`` (when a token is set)."""
        if self._token is None:
            return
        if authorization is None or not authorization.lower().startswith(SCHEME):
            raise Unauthorized("this control route needs the admin token: send "
                               "'Authorization: Bearer <token>'")
        offered = authorization[len(SCHEME):].strip().encode()
        if not hmac.compare_digest(offered, self._token):
            raise Unauthorized("the admin token does not match")

    def check_metadata(self, metadata: Iterable[Any] | None) -> None:
        """The same check on gRPC invocation metadata."""
        if self._token is None:
            return
        value = None
        for key, item in metadata or ():
            if key.lower() == "authorization":
                value = item.decode("latin-1") if isinstance(item, bytes) else item
        self.check(value)


def refuse_cross_site(headers: Any) -> None:
    """403 for a browser request from a page of another origin (scheme, host and port).

    ``Sec-Fetch-Site`` (sent by current browsers) must be ``same-origin`` or ``none`` (typed
    in, a bookmark); otherwise an ``Origin`` must match the ``Host`` the request was sent to.
    Requests with neither header (curl, the ``shoal`` command, SDKs) pass."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        if site.lower() in ("same-origin", "none"):
            return
        raise Forbidden(f"a control route refuses requests from another site's page "
                        f"(Sec-Fetch-Site: {site})")
    origin = headers.get("origin")
    if origin is None:
        return
    host = headers.get("host", "")
    if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
        raise Forbidden(f"a control route refuses requests from another site's page "
                        f"(Origin: {origin})")

