"""The running operator: kopf handlers around :mod:`.reconcile`, a Kubernetes client, and a
resync loop.

- ``@kopf.on.create`` / ``@kopf.on.update`` (of ``spec``) / ``@kopf.on.resume`` run
  :meth:`Operator.reconcile`: validate, fetch the repository into the cache (object storage
  only, only what changed; a local path is refused), render, create / server-side-apply
  what differs (kinds the cluster does not serve are skipped, with a warning), delete owned
  objects the render no longer has (an old Deployment only once its replacements are
  Available: the resync deletes it later), write the status. A repository URI is only ever
  shown redacted (:func:`~shoal.repository.uris.display`).
- ``@kopf.on.event`` keeps the latest copy of every ShoalService (and forgets deleted ones).
- :meth:`Operator.resync_forever` (every ``resync`` seconds) re-reads the objects of every
  reconciled ShoalService, re-applies any that went missing or were changed by hand, and
  updates ``Ready``, ``url`` and ``traffic``. It is a task of its own rather than a kopf
  timer: kopf timers put a finalizer on each object, and the operator wants none (see
  below).
- No finalizer, no delete handler: every object carries an owner reference to its
  ShoalService (``controller: true``), so Kubernetes' garbage collector deletes them with
  it, and deleting a ShoalService never waits for the operator (nor hangs when it is not
  running).
- kopf keeps its own progress in annotations (``serving.shoal.io/...``), not in the
  status, whose schema has no room for it; it runs standalone (one replica, no peering) and
  with resource scanning off, so it needs no cluster-wide permissions when watching given
  namespaces.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from ...repository.sources import fetch_repository
from ...repository.stores import FetchError
from ...repository.uris import check_uri, default_cache_dir, display
from ..crd import GROUP, PLURAL, VERSION
from ..render import is_remote
from .client import RESOURCES, KubeClient, KubeError
from .reconcile import (
    Desired,
    InvalidSpec,
    Key,
    check,
    condition,
    desired_objects,
    failed_status,
    invalid_status,
    key,
    observe,
    plan,
    replacements_waiting,
    resource_path,
    same_status,
    spec_hash,
    stale,
    status_for,
)

LOG = logging.getLogger("shoal.operator")

#: In-cluster credentials (the pod's service account).
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"

NO_CREDENTIALS = (
    "no Kubernetes credentials: not in a cluster (no service-account token at "
    f"{SERVICE_ACCOUNT_TOKEN}) and no kubeconfig ($KUBECONFIG or ~/.kube/config). Run it in "
    "a pod (shoal k8s operator-manifests), or point KUBECONFIG at a cluster"
)


class ReconcileFailed(RuntimeError):
    """A reconcile that must be retried; ``status`` says why (``Reconciled`` False)."""

    def __init__(self, message: str, status: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status


class CredentialsError(RuntimeError):
    """Neither in-cluster nor kubeconfig credentials exist (or they cannot be read)."""


def find_credentials() -> str:
    """Which credentials the operator will use (``"in-cluster service account"``,
    ``"kubeconfig PATH"``), or :class:`CredentialsError` with what to do."""
    if os.path.exists(SERVICE_ACCOUNT_TOKEN):
        return "in-cluster service account"
    configured = os.environ.get("KUBECONFIG")
    if configured:
        paths = [os.path.expanduser(p) for p in configured.split(os.pathsep) if p.strip()]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise CredentialsError(f"KUBECONFIG names {missing[0]}, which does not exist")
        return f"kubeconfig {configured}"
    default = os.path.expanduser("~/.kube/config")
    if os.path.exists(default):
        return f"kubeconfig {default}"
    raise CredentialsError(NO_CREDENTIALS)


async def login(settings: kopf.OperatorSettings, logger: Any = LOG) -> kopf.ConnectionInfo:
    """In-cluster service account first, then the kubeconfig: with the official client
    (``kubernetes`` / ``kubernetes_asyncio``) when installed, which also runs ``exec``
    plugins (EKS, GKE), else kopf's own kubeconfig reader."""
    if os.path.exists(SERVICE_ACCOUNT_TOKEN):
        info = kopf.login_with_service_account(settings=settings, logger=logger)
        if info is not None:
            return info
    attempts: list[Any] = []
    for module, name in (("kubernetes_asyncio", "login_via_async_client"),
                         ("kubernetes", "login_via_client")):
        try:
            __import__(module)
        except ImportError:
            continue
        if hasattr(kopf, name):
            attempts.append(getattr(kopf, name))
    attempts.append(kopf.login_with_kubeconfig)
    reasons = []
    for attempt in attempts:
        try:
            result = attempt(settings=settings, logger=logger)
            if asyncio.iscoroutine(result):
                result = await result
        except (kopf.LoginError, OSError, KeyError, ValueError) as exc:
            reasons.append(str(exc))
            continue
        if result is not None:
            return result
    raise kopf.LoginError(NO_CREDENTIALS + (f" ({'; '.join(reasons)})" if reasons else ""))


def settings(*, post_events: bool = True) -> kopf.OperatorSettings:
    out = kopf.OperatorSettings()
    out.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    out.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    out.peering.standalone = True
    out.scanning.disabled = True
    out.posting.enabled = post_events
    out.posting.level = logging.WARNING
    return out


@dataclass
class Applied:
    uid: str
    spec: str  # spec_hash of what was rendered
    desired: Desired
    notes: str  # what the Reconciled condition's message adds ("; note: ...")
    #: Old Deployments are kept until the ones replacing them are Available: the resync
    #: prunes again while this is set.
    prune_pending: bool = False


def redact(text: str, source: str) -> str:
    """``text`` with the repository URI ``source`` shown without its credentials or presigned
    query (:func:`~shoal.repository.uris.display`): for conditions, events and logs."""
    shown = display(source)
    return text.replace(source, shown) if source and shown != source else text


def reconciled_condition(count: int, notes: str,
                         skipped: list[dict[str, Any]]) -> dict[str, Any]:
    """``Reconciled`` True: ``Applied``, or ``KindNotServed`` (a warning) when objects of kinds
    the cluster does not serve were left out (no prometheus-operator, no Istio, ...)."""
    message = f"{count} objects as rendered" + notes
    if not skipped:
        return condition("Reconciled", True, "Applied", message)
    kinds = sorted({f"{o['apiVersion']} {o['kind']}" for o in skipped})
    names = ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in skipped)
    hint = ""
    if any(o["apiVersion"].startswith("monitoring.coreos.com/") for o in skipped):
        hint = " (install prometheus-operator, or set spec.monitor: false)"
    message = (f"{count - len(skipped)} of {count} objects applied; the cluster does not serve "
               f"{', '.join(kinds)}: skipped {names}{hint}" + notes)
    return condition("Reconciled", True, "KindNotServed", message)


def _plain(value: Any) -> Any:
    """A kopf body (mapping views) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class Operator:
    """The operator's state: the client, the repository cache, what was applied for each
    ShoalService, and one lock per ShoalService (a reconcile and a resync never overlap)."""

    def __init__(self, *, cache_dir: Path | None = None, resync: float = 30.0,
                 retry_delay: float = 30.0, connection: kopf.ConnectionInfo | None = None,
                 operator_settings: kopf.OperatorSettings | None = None) -> None:
        self.cache_dir = cache_dir or default_cache_dir()
        self.resync = resync
        self.retry_delay = retry_delay
        self.connection = connection
        self.settings = operator_settings or settings()
        self.client = KubeClient(self.login)
        self.known: dict[tuple[str, str], dict[str, Any]] = {}
        self.applied: dict[tuple[str, str], Applied] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def login(self) -> kopf.ConnectionInfo:
        if self.connection is not None:
            return self.connection
        return await login(self.settings)

    async def close(self) -> None:
        await self.client.close()

    def forget(self, ident: tuple[str, str]) -> None:
        self.known.pop(ident, None)
        self.applied.pop(ident, None)
        lock = self._locks.get(ident)
        if lock is not None and not lock.locked():
            del self._locks[ident]

    def _lock(self, ident: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(ident, asyncio.Lock())

    # -- the kopf side ------------------------------------------------------------------------

    def registry(self) -> kopf.OperatorRegistry:
        """The handlers, in a registry of their own (several operators can run in one
        process, as the tests do)."""
        registry = kopf.OperatorRegistry()
        @kopf.on.login(registry=registry)
        async def credentials(**_: Any) -> kopf.ConnectionInfo:
            return await self.login()

        async def reconcile(body: Any, patch: Any, logger: Any, **_: Any) -> None:
            # The status goes into kopf's own patch (with its progress annotations): one
            # write, and no event of ours that kopf would have to tell from its own.
            resource = _plain(body)
            self.known[_ident(resource)] = resource
            try:
                status = await self.reconcile(resource, logger)
            except ReconcileFailed as exc:
                self._stage_status(resource, exc.status, patch)
                raise kopf.TemporaryError(str(exc), delay=self.retry_delay) from None
            self._stage_status(resource, status, patch)

        kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)(reconcile)
        kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile-update", field="spec",
                       registry=registry)(reconcile)
        kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile-resume",
                       registry=registry)(reconcile)

        @kopf.on.event(GROUP, VERSION, PLURAL, id="track", registry=registry)
        async def track(event: Mapping[str, Any], **_: Any) -> None:
            resource = _plain(event.get("object") or {})
            if not resource.get("metadata"):
                return
            ident = _ident(resource)
            if event.get("type") == "DELETED" or resource["metadata"].get("deletionTimestamp"):
                self.forget(ident)
            else:
                self.known[ident] = resource

        return registry

    # -- reconciling --------------------------------------------------------------------------

    def fetch(self, source: str) -> Path | str:
        """The repository as a local folder: object storage is mirrored into the cache
        (only what changed is fetched again); a folder is read where it is."""
        if not is_remote(source):
            return source
        return fetch_repository(source, cache_dir=self.cache_dir)

    async def reconcile(self, resource: dict[str, Any], logger: Any = LOG) -> dict[str, Any]:
        """Bring the cluster to what ``resource`` renders to; the status to write.

        An invalid spec is an outcome (its status says which field), not an error; an
        unreadable repository or a write the API server refuses raises
        :class:`ReconcileFailed` (with the status saying so), which kopf retries."""
        ident = _ident(resource)
        source = str((resource.get("spec") or {}).get("repository") or "")
        async with self._lock(ident):
            try:
                desired = await self._desired(resource)
            except InvalidSpec as exc:
                exc = InvalidSpec(exc.field, redact(exc.detail, source))
                logger.warning(f"invalid ShoalService: {exc}")
                self.applied.pop(ident, None)
                return invalid_status(resource, exc)
            except (FetchError, OSError) as exc:  # the store's reason; retried
                message = f"cannot read {display(source)}: {redact(str(exc), source)}"
                raise ReconcileFailed(message, failed_status(
                    resource, "RepositoryUnavailable", message)) from None
            try:
                objects, skipped = await self.served(desired.objects)
                counts = await self.apply_all(objects)
                live = await self.read(objects)
                counts["removed"], deferred = await self.prune(resource, desired.objects,
                                                               objects, live)
            except KubeError as exc:
                message = redact(str(exc), source)
                raise ReconcileFailed(message, failed_status(
                    resource, "ApplyFailed", message)) from None
            LOG.info(f"{ident[0]}/{ident[1]}: {len(desired.objects)} objects: "
                     f"{counts['create']} created, {counts['apply']} updated, "
                     f"{counts['keep']} unchanged, {counts['removed']} removed")
            # A state, not the last pass's counts: reconciling again changes no status.
            notes = ("; note: " + "; ".join(desired.notes)) if desired.notes else ""
            notes = redact(notes, source)
            reconciled = reconciled_condition(len(desired.objects), notes, skipped)
            if skipped:
                logger.warning(f"{reconciled['message']}")  # an event, type Warning
            self.applied[ident] = Applied(resource["metadata"]["uid"], spec_hash(resource),
                                          desired, notes, prune_pending=bool(deferred))
            if deferred:
                live = await self.read(objects)
            return status_for(resource, reconciled, observe(resource, objects, live))

    async def _desired(self, resource: dict[str, Any]) -> Desired:
        check(resource)  # before fetching anything
        source = str(resource["spec"]["repository"])
        try:
            check_uri(source)
        except ValueError as exc:  # not a URI Shoal can fetch (ftp://, s3:// without a bucket)
            raise InvalidSpec("spec.repository", str(exc)) from None
        if not is_remote(source):
            # The operator reads it with its own credentials, in its own container: a
            # ShoalService may only name object storage or an archive.
            raise InvalidSpec("spec.repository", (
                f"{source!r} is a local path: a ShoalService names object storage or an "
                "archive (s3://bucket/prefix, gs://bucket/prefix, https://host/repo.tar.gz); "
                "the operator does not read its own files"))
        folder = await asyncio.to_thread(self.fetch, source)
        return await asyncio.to_thread(desired_objects, resource, repository=folder)

    async def read(self, objects: list[dict[str, Any]]) -> dict[Key, dict[str, Any] | None]:
        return {key(o): await self.client.get(o) for o in objects}

    async def apply_all(self, objects: list[dict[str, Any]]) -> dict[str, int]:
        """Create what is missing, server-side apply what differs, leave the rest alone."""
        live = await self.read(objects)
        counts = {"create": 0, "apply": 0, "keep": 0}
        for verb, obj in plan(objects, live):
            counts[verb] += 1
            if verb != "keep":
                await self.client.apply(obj)
        return counts

    async def served(self, objects: list[dict[str, Any]]
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``objects`` split into those of kinds the cluster serves and those of kinds it does
        not (their CRDs are not installed): applying those would fail every pass."""
        kinds = {(o["apiVersion"], o["kind"]) for o in objects}
        ok = {k for k in kinds if await self.client.served(*k)}
        return ([o for o in objects if (o["apiVersion"], o["kind"]) in ok],
                [o for o in objects if (o["apiVersion"], o["kind"]) not in ok])

    async def prune(self, resource: Mapping[str, Any], desired: list[dict[str, Any]],
                    applied: list[dict[str, Any]] | None = None,
                    live: Mapping[Key, dict[str, Any] | None] | None = None
                    ) -> tuple[int, list[str]]:
        """Delete objects this ShoalService owns that its render (``desired``) no longer has:
        the number deleted, and the Deployments kept for now.

        A Deployment goes only once what replaces it is up (every Deployment of ``applied``
        Available, a Knative Service Ready; ``live``: their live copies, read when not
        given): deleting it in the pass that creates its successor (a promoted canary, Istio
        switched on or off) would leave nothing serving. A later pass (the resync) deletes
        it. Other objects go at once."""
        meta = resource["metadata"]
        applied = desired if applied is None else applied
        selector = f"app.kubernetes.io/instance={meta['name']},app.kubernetes.io/managed-by=shoal"
        removed = 0
        deferred: list[str] = []
        waiting: list[str] | None = None
        for api_version, kind in RESOURCES:
            try:
                existing = await self.client.list(api_version, kind, meta["namespace"], selector)
            except KubeError as exc:
                if exc.status == 403:  # not granted: nothing of that kind was ever applied
                    continue
                raise
            for obj in stale(desired, existing or [], meta["uid"]):
                if obj["kind"] == "Deployment":
                    if waiting is None:
                        waiting = replacements_waiting(
                            applied, live if live is not None else await self.read(applied))
                    if waiting:
                        deferred.append(obj["metadata"]["name"])
                        continue
                await self.client.delete(dict(obj))
                removed += 1
        if deferred:
            LOG.info(f"{meta.get('namespace')}/{meta['name']}: keeping Deployment "
                     f"{', '.join(deferred)} until what replaces it is up "
                     f"({'; '.join(waiting or [])})")
        return removed, deferred

    def _remember_status(self, resource: Mapping[str, Any], status: dict[str, Any]) -> None:
        stored = self.known.get(_ident(resource))
        if stored is not None:  # so the next comparison sees what was written
            stored.setdefault("status", {}).update(copy.deepcopy(status))

    def _stage_status(self, resource: Mapping[str, Any], status: dict[str, Any],
                      patch: Any) -> None:
        """Put ``status`` into a kopf handler's patch, if it changes anything."""
        if same_status(resource.get("status"), status):
            return
        for name, value in status.items():
            patch.status[name] = value
        self._remember_status(resource, status)

    async def write_status(self, resource: Mapping[str, Any], status: dict[str, Any]) -> None:
        """Merge-patch the ShoalService's ``/status`` (outside a handler: the resync)."""
        if same_status(resource.get("status"), status):
            return
        await self.client.patch_status(resource_path(resource), status)
        self._remember_status(resource, status)

    # -- resync -------------------------------------------------------------------------------

    async def resync_once(self) -> None:
        """Repair and observe every reconciled ShoalService whose spec is still the one
        rendered; one failing does not stop the others."""
        for ident, resource in list(self.known.items()):
            applied = self.applied.get(ident)
            if applied is None or applied.uid != resource["metadata"].get("uid") \
                    or applied.spec != spec_hash(resource):
                continue
            source = str((resource.get("spec") or {}).get("repository") or "")
            try:
                async with self._lock(ident):
                    everything = applied.desired.objects
                    objects, skipped = await self.served(everything)  # a CRD installed since?
                    live = await self.read(objects)
                    repairs = [(verb, obj) for verb, obj in plan(objects, live) if verb != "keep"]
                    if repairs or applied.prune_pending:
                        # Never bring back what the garbage collector just deleted: the
                        # ShoalService must still be there (the watch may not have said yet).
                        current = await self.client.request("GET", resource_path(resource))
                        meta = (current or {}).get("metadata") or {}
                        if meta.get("uid") != applied.uid or meta.get("deletionTimestamp"):
                            self.forget(ident)
                            continue
                    if repairs:
                        for _, obj in repairs:
                            await self.client.apply(obj)
                        LOG.info(f"{ident[0]}/{ident[1]}: re-applied "
                                 + ", ".join(f"{o['kind']} {o['metadata']['name']}"
                                             for _, o in repairs))
                        live = await self.read(objects)
                    if applied.prune_pending:
                        removed, deferred = await self.prune(resource, everything, objects, live)
                        applied.prune_pending = bool(deferred)
                        if removed:
                            LOG.info(f"{ident[0]}/{ident[1]}: {removed} objects removed")
                    seen = observe(resource, objects, live)
                    reconciled = reconciled_condition(len(everything), applied.notes, skipped)
                    await self.write_status(resource, status_for(resource, reconciled, seen))
            except (KubeError, OSError, asyncio.TimeoutError) as exc:
                LOG.warning(f"{ident[0]}/{ident[1]}: resync failed: {redact(str(exc), source)}")

    async def resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.resync)
            try:
                await self.resync_once()
            except kopf.LoginError as exc:
                LOG.error(f"resync: {exc}")


def _ident(resource: Mapping[str, Any]) -> tuple[str, str]:
    meta = resource["metadata"]
    return meta.get("namespace") or "", meta["name"]


async def run(*, namespaces: Collection[str] = (), clusterwide: bool = False,
              cache_dir: Path | None = None, resync: float = 30.0, retry_delay: float = 30.0,
              liveness: str | None = None, connection: kopf.ConnectionInfo | None = None,
              post_events: bool = True, stop_flag: asyncio.Event | None = None,
              ready_flag: asyncio.Event | None = None) -> None:
    """Run the operator until ``stop_flag`` is set (or SIGINT / SIGTERM in the main thread).

    ``namespaces``: watch these; ``clusterwide``: every namespace. ``connection``: use these
    credentials instead of logging in (tests). ``liveness``: kopf's liveness endpoint
    (``http://0.0.0.0:8080/healthz``).
    """
    if bool(namespaces) == bool(clusterwide):
        raise ValueError("watch either some namespaces or all of them (clusterwide)")
    operator_settings = settings(post_events=post_events)
    operator = Operator(cache_dir=cache_dir, resync=resync, retry_delay=retry_delay,
                        connection=connection, operator_settings=operator_settings)
    resyncing = asyncio.create_task(operator.resync_forever(), name="shoal-operator-resync")
    try:
        await kopf.operator(registry=operator.registry(), settings=operator_settings,
                            clusterwide=clusterwide, namespaces=list(namespaces),
                            standalone=True, liveness_endpoint=liveness, stop_flag=stop_flag,
                            ready_flag=ready_flag)
    finally:
        resyncing.cancel()
        await asyncio.gather(resyncing, return_exceptions=True)
        await operator.close()
