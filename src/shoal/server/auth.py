"""The admin token that protects control routes: repository load/unload and rollout changes.

With ``--admin-token`` (``SHOAL_ADMIN_TOKEN``) set, those routes need
``Authorization: Bearer <token>`` (gRPC: the same ``authorization`` metadata) and answer 401
(UNAUTHENTICATED) without it; inference, health, metadata and status stay open. Without a
token they are open, which is fine on 127.0.0.1 (the default bind) and logged as a warning
on any other address.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

from ..errors import Unauthorized

SCHEME = "bearer "


class AdminToken:
    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

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
