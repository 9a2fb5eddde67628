"""gRPC's health checking protocol (``grpc.health.v1.Health``) on Shoal's gRPC port.

The messages and service come from ``grpcio-health-checking``; the status is not stored
but read from the data plane on every call, so it is always the one ``/v2/health/ready`` and
``ModelReady`` give, and nothing on the inference path has to report to it.

Service names:

- ``""`` (the overall status, what Kubernetes' ``grpc`` probe asks by default), and the
  full names of the inference services (``inference.GRPCInferenceService``,
  ``tensorflow.serving.PredictionService``, ``tensorflow.serving.ModelService``): SERVING
  while the server is ready (the startup load is done and it is not shutting down), as
  ``/v2/health/ready``; NOT_SERVING otherwise.
- ``MODEL``: SERVING while the model is ready (its newest ready version, or its rollout's
  stable variant), as ``/v2/models/MODEL/ready``; NOT_SERVING while it loads, after it
  failed to load, after it was unloaded (a folder in the repository is a known name), and
  while the server shuts down.
- ``MODEL/VERSION``: the same for one version the server has (loaded, loading or failed).
- Any other name: ``Check`` answers NOT_FOUND, ``Watch`` sends SERVICE_UNKNOWN (and then the
  status if the name becomes known, e.g. a model loaded later).

The names of gRPC services come first; a model name cannot contain ``/``, so ``MODEL/VERSION``
never is one.

``Watch`` streams changes: one task per server looks at every watched name every
:data:`WATCH_INTERVAL` seconds while anything is watched, and wakes the streams whose status
changed. Once the server starts shutting down every stream sends its last status
(NOT_SERVING) and ends with UNAVAILABLE, so an open watch never holds the shutdown up for the
drain timeout (clients retry a ``Watch`` that ended, per the protocol).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..errors import ShoalError
from ..serving.dataplane import DataPlane

Status = health_pb2.HealthCheckResponse.ServingStatus
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

#: Seconds between two looks at the watched names' status.
WATCH_INTERVAL = 0.25
#: What a ``Watch`` stream ends with once the server shuts down.
SHUTTING_DOWN = "server is shutting down"


@dataclass(eq=False)
class _Watched:
    """One watched name: its last status, and an event set (then replaced) on a change."""

    status: Status
    watchers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, dataplane: DataPlane, services: tuple[str, ...] = ()) -> None:
        self.dataplane = dataplane
        #: gRPC service names that report the server's overall status, like "".
        self.services = frozenset(("", *services))
        self._watched: dict[str, _Watched] = {}
        self._poller: asyncio.Task[None] | None = None

    def status(self, service: str) -> Status:
        """The status of a service name, SERVICE_UNKNOWN for a name that is not known."""
        dataplane = self.dataplane
        if service in self.services:
            return SERVING if dataplane.ready else NOT_SERVING
        name, slash, version = service.partition("/")
        if slash and not version:
            return SERVICE_UNKNOWN
        try:
            if version:
                dataplane.registry.entry(name, version)  # NOT_FOUND for a version never seen
            elif not dataplane.registry.entries(name):
                # Not loaded (unloaded, or never loaded): known while its folder is there.
                return NOT_SERVING if name in dataplane.repository.names() else SERVICE_UNKNOWN
            return SERVING if dataplane.model_ready(name, version or None) else NOT_SERVING
        except (ShoalError, OSError):
            return SERVICE_UNKNOWN

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status == SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:200]!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        """Every gRPC service name and every model (not each version)."""
        try:
            models = set(self.dataplane.repository.names())
        except OSError:
            models = set()
        names = sorted(self.services | models | set(self.dataplane.registry.names()))
        statuses = {name: health_pb2.HealthCheckResponse(status=self.status(name)) for name in names}
        return health_pb2.HealthListResponse(statuses=statuses)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        service = request.service
        watched = self._watched.get(service)
        if watched is None:
            watched = self._watched[service] = _Watched(self.status(service))
        watched.watchers += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            sent = None
            while True:
                status, changed = watched.status, watched.changed
                if status != sent:
                    yield health_pb2.HealthCheckResponse(status=status)
                    sent = status
                if self.dataplane.draining:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                await changed.wait()
        finally:
            watched.watchers -= 1
            if not watched.watchers:
                del self._watched[service]

    async def _poll(self) -> None:
        """While anything is watched: look at each watched name, wake the streams whose
        status changed, and all of them once the server shuts down."""
        draining = False
        while self._watched:
            await asyncio.sleep(WATCH_INTERVAL)
            now_draining = self.dataplane.draining
            for service, watched in list(self._watched.items()):
                status = self.status(service)
                if status != watched.status or (now_draining and not draining):
                    watched.status = status
                    watched.changed.set()
                    watched.changed = asyncio.Event()
            draining = now_draining
