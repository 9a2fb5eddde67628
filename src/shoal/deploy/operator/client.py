"""A small async Kubernetes REST client for the objects ``render`` produces.

The operator applies a fixed set of kinds (:data:`RESOURCES`), so it needs no discovery and no
generated client: paths come from that table, JSON goes over ``aiohttp`` (kopf's own HTTP
library) with the credentials kopf logged in with (:class:`kopf.ConnectionInfo`: a token,
basic auth or a client certificate, the cluster's CA, a proxy).

Writes:

- :meth:`KubeClient.apply` is **server-side apply**, for new objects too: ``PATCH`` with
  ``application/apply-patch+yaml`` (JSON is YAML), ``fieldManager=shoal-operator`` and
  ``force=true``: the operator owns the fields it renders, fields it stops rendering are
  removed, and fields it never sets (an autoscaler's ``spec.replicas``, what admission
  webhooks add) are left alone;
- :meth:`KubeClient.patch_status` merge-patches a ShoalService's ``/status`` subresource.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp

#: Field manager of the operator's server-side applies.
FIELD_MANAGER = "shoal-operator"

#: Every kind ``render`` produces: (apiVersion, kind) -> plural. The operator applies,
#: prunes and (for RBAC) is granted exactly these.
RESOURCES: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitors",
    ("networking.istio.io/v1", "VirtualService"): "virtualservices",
    ("networking.istio.io/v1", "DestinationRule"): "destinationrules",
    ("serving.knative.dev/v1", "Service"): "services",
}


class KubeError(Exception):
    """An API request failed: the HTTP status and the server's ``Status`` reason/message."""

    def __init__(self, status: int, reason: str, message: str, what: str) -> None:
        super().__init__(f"{what}: {status} {reason}: {message}".rstrip(": "))
        self.status = status
        self.reason = reason
        self.message = message


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    """``/apis/GROUP/VERSION/namespaces/NS/PLURAL`` (``/api/v1/...`` for the core group)."""
    try:
        plural = RESOURCES[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator does not manage {api_version} {kind}") from None
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{root}/namespaces/{quote(namespace, safe='')}/{plural}"


def object_path(obj: dict[str, Any], namespace: str | None = None) -> str:
    meta = obj["metadata"]
    ns = namespace or meta.get("namespace")
    if not ns:
        raise ValueError(f"{obj['kind']} {meta['name']} has no namespace")
    return f"{collection_path(obj['apiVersion'], obj['kind'], ns)}/{quote(meta['name'], safe='')}"


def _pem(data: str | bytes) -> str:
    text = data.decode() if isinstance(data, bytes) else data
    return text if text.lstrip().startswith("-----BEGIN ") else base64.b64decode(text).decode()


def ssl_context(info: Any) -> ssl.SSLContext:
    """The TLS settings of a :class:`kopf.ConnectionInfo`: its CA (path or kubeconfig's
    base64 data), a client certificate (written to private temporary files only while the
    context loads them), ``insecure-skip-tls-verify``."""
    context = ssl.create_default_context(
        cafile=os.fspath(info.ca_path) if info.ca_path else None,
        cadata=_pem(info.ca_data) if info.ca_data else None,
    )
    cert, key = info.certificate_path, info.private_key_path
    with contextlib.ExitStack() as stack:
        if info.certificate_data or info.private_key_data:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="shoal-operator-"))
            if info.certificate_data:
                cert = os.path.join(folder, "cert.pem")
                with open(os.open(cert, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                    f.write(_pem(info.certificate_data))
            if info.private_key_data:
                key = os.path.join(folder, "key.pem")
                with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                    f.write(_pem(info.private_key_data))
        if cert:
            context.load_cert_chain(os.fspath(cert), os.fspath(key) if key else None)
    if info.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def auth_headers(info: Any) -> dict[str, str]:
    if info.username and info.password:
        return {"Authorization": aiohttp.BasicAuth(info.username, info.password).encode()}
    if info.token:
        return {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"}
    return {}


class KubeClient:
    """Requests with the credentials ``login`` returns (a :class:`kopf.ConnectionInfo`);
    on a ``401`` it logs in again once (rotated service-account tokens, expired exec
    tokens) and repeats the request."""

    def __init__(self, login: Callable[[], Awaitable[Any]], *, timeout: float = 30.0) -> None:
        self._login = login
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._info: Any = None
        self._discovery: dict[str, tuple[float, frozenset[str] | None]] = {}

    async def _connect(self, fresh: bool = False) -> aiohttp.ClientSession:
        if self._session is not None and not fresh:
            return self._session
        await self.close()
        info = await self._login()
        self._info = info
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context(info)),
            headers={**auth_headers(info), "User-Agent": "shoal-operator"},
            trust_env=bool(getattr(info, "trust_env", False)),
            timeout=self._timeout,
        )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> Any:
        """The decoded JSON answer, ``None`` for a 404; :class:`KubeError` otherwise."""
        for attempt in (0, 1):
            session = await self._connect(fresh=attempt == 1)
            url = self._info.server.rstrip("/") + path
            data = None if body is None else json.dumps(body)
            async with session.request(method, url, data=data, params=params,
                                       proxy=getattr(self._info, "proxy_url", None),
                                       headers={"Content-Type": content_type}) as response:
                if response.status == 401 and attempt == 0:
                    continue
                if response.status == 404:
                    return None
                text = await response.text()
                if response.status >= 400:
                    try:
                        status = json.loads(text)
                    except ValueError:
                        status = {}
                    raise KubeError(response.status,
                                    str(status.get("reason") or response.reason or ""),
                                    str(status.get("message") or text[:200]),
                                    f"{method} {path}")
                return json.loads(text) if text else None
        raise AssertionError("unreachable")

    # -- the operations the operator uses -----------------------------------------------------

    #: How long discovery answers are kept (a CRD installed later is seen after this).
    DISCOVERY_TTL = 30.0

    async def served(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves ``kind`` at all (API discovery: its group/version lists
        the resource), which a 404 for an object cannot tell from a missing object. Answers
        are kept :attr:`DISCOVERY_TTL` seconds."""
        now = time.monotonic()
        cached = self._discovery.get(api_version)
        if cached is None or now - cached[0] > self.DISCOVERY_TTL:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            answer = await self.request("GET", path)
            names = None if answer is None else frozenset(
                str(r.get("name")) for r in answer.get("resources") or [])
            cached = self._discovery[api_version] = (now, names)
        names = cached[1]
        return names is not None and RESOURCES[(api_version, kind)] in names

    async def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        return await self.request("GET", object_path(obj))

    async def list(self, api_version: str, kind: str, namespace: str,
                   label_selector: str | None = None) -> list[dict[str, Any]] | None:
        """The objects of a kind in a namespace; ``None`` when the cluster does not serve
        that kind (its CRDs are not installed: no Istio, no KEDA, ...)."""
        params = {"labelSelector": label_selector} if label_selector else None
        answer = await self.request("GET", collection_path(api_version, kind, namespace),
                                    params=params)
        if answer is None:
            return None
        items = answer.get("items") or []
        for item in items:  # list items come without their type
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = collection_path(obj["apiVersion"], obj["kind"], meta["namespace"])
        answer = await self.request("POST", path, body=obj,
                                    params={"fieldManager": FIELD_MANAGER})
        if answer is None:
            raise KubeError(404, "NotFound", f"the cluster does not serve {obj['apiVersion']} "
                                             f"{obj['kind']} (are its CRDs installed?)",
                            f"POST {path}")
        return answer

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of ``obj`` (the whole desired object), which also creates it:
        one field manager owns every field the operator ever set. An API that cannot
        create by apply (the kmock emulator the tests use) answers 404: then ``POST``."""
        answer = await self.request("PATCH", object_path(obj), body=obj,
                                    params={"fieldManager": FIELD_MANAGER, "force": "true"},
                                    content_type="application/apply-patch+yaml")
        return answer if answer is not None else await self.create(obj)

    async def delete(self, obj: dict[str, Any]) -> None:
        await self.request("DELETE", object_path(obj),
                           body={"kind": "DeleteOptions", "apiVersion": "v1",
                                 "propagationPolicy": "Background"})

    async def patch_status(self, path: str, status: dict[str, Any]) -> dict[str, Any] | None:
        return await self.request("PATCH", f"{path}/status", body={"status": status},
                                  content_type="application/merge-patch+json")
