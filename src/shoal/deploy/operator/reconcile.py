"""The operator's logic as plain functions: a ShoalService in, what to apply and what its
status says out. Nothing here talks to a cluster or needs kopf (:mod:`.runtime` does that).

- :func:`check` validates a ShoalService against the CRD's ``openAPIV3Schema`` and raises
  :class:`InvalidSpec` naming the field (``spec.rollout.canary.percent``).
- :func:`desired_objects` renders it (``render(**render_options(resource))`` from a local
  copy of its repository) and marks every object as the ShoalService's: its namespace, an
  owner reference (``controller: true``, so deleting the ShoalService deletes them) and an
  annotation with the fingerprint of what was rendered. A :class:`~shoal.deploy.RenderError`
  becomes an :class:`InvalidSpec` naming the ShoalService field at fault.
- :func:`plan` compares the desired objects with the live ones: ``create`` what is missing,
  ``apply`` what differs, ``keep`` the rest untouched (so changing a canary's percentage
  writes the VirtualService and never the Deployments). :func:`stale` lists owned objects
  the render no longer has (a promoted canary's old Deployment) to delete;
  :func:`replacements_waiting` says what must be up before an old Deployment may go.
- :func:`observe` reads the live objects: readiness (Deployments ``Available``, the Knative
  Service ``Ready``), the URL, the traffic split; :func:`status_for` and
  :func:`invalid_status` build the ``status`` to write, keeping ``lastTransitionTime``
  where a condition did not change.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import re
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..crd import API_VERSION, GROUP, KIND, PLURAL, VERSION, render_options
from ..render import is_remote, render
from ..spec import HTTP_PORT, RenderError
from ..standard import ROLE_LABEL
from ..units import DeployWarning

#: The fingerprint of the rendered object, on every object the operator applies.
HASH_ANNOTATION = "serving.shoal.io/applied-hash"

Key = tuple[str, str, str]  # apiVersion, kind, name
Verb = Literal["create", "apply", "keep"]

#: ``warnings.catch_warnings`` is process-wide: renders that record warnings take turns.
_RENDER_LOCK = threading.Lock()


class InvalidSpec(ValueError):
    """The ShoalService cannot be reconciled as it is: ``field`` names what to change
    (``spec.rollout.canary.percent``, ``metadata.name``), ``detail`` says why."""

    def __init__(self, field_name: str, detail: str) -> None:
        super().__init__(f"{field_name}: {detail}")
        self.field = field_name
        self.detail = detail


@dataclass
class Desired:
    """What a ShoalService renders to, and the notes of what could not be expressed."""

    objects: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Observation:
    ready: bool
    reason: str
    message: str
    url: str
    traffic: list[dict[str, Any]]


# -- names and paths ------------------------------------------------------------------------


def key(obj: Mapping[str, Any]) -> Key:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def resource_path(resource: Mapping[str, Any]) -> str:
    """The ShoalService's API path (its ``/status`` is beside it)."""
    meta = resource["metadata"]
    return (f"/apis/{GROUP}/{VERSION}/namespaces/{meta['namespace']}/{PLURAL}/"
            f"{meta['name']}")


def spec_hash(resource: Mapping[str, Any]) -> str:
    text = json.dumps(resource.get("spec") or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(obj: Mapping[str, Any]) -> str:
    """A hash of an object as rendered (without this annotation itself)."""
    body = copy.deepcopy(dict(obj))
    annotations = body.get("metadata", {}).get("annotations") or {}
    annotations.pop(HASH_ANNOTATION, None)
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- validation -----------------------------------------------------------------------------


def _dotted(path: list[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def schema_field(error: Any) -> str:
    """The field a ``jsonschema.ValidationError`` is about, dotted
    (``spec.rollout.canary.percent``); a missing or unknown property is named too."""
    path = list(error.absolute_path)
    if error.validator == "required":
        match = re.match(r"'([^']+)' is a required property", error.message)
        if match:
            path.append(match.group(1))
    elif error.validator == "additionalProperties":
        match = re.search(r"\('([^']+)'", error.message)
        if match:
            path.append(match.group(1))
    return _dotted(path) or "spec"


def check(resource: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidSpec` unless ``resource`` is a ShoalService its CRD's schema
    accepts (unknown fields refused, as ``kubectl apply`` does). Its status is not checked:
    the operator writes that."""
    import jsonschema

    from ..crd import validate_resource

    body = {k: resource[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in resource}
    try:
        validate_resource(body)
    except jsonschema.ValidationError as exc:
        raise InvalidSpec(schema_field(exc), exc.message) from None


#: Where a RenderError's message points, first match wins: (pattern, ShoalService field).
_RENDER_FIELDS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^--name\b"), "metadata.name"),
    (re.compile(r"^--image\b"), "spec.image"),
    (re.compile(r"^--mode\b"), "spec.mode"),
    (re.compile(r"^--autoscaler\b"), "spec.autoscaler"),
    (re.compile(r"^--metric\b"), "spec.metric"),
    (re.compile(r"^--istio\b"), "spec.istio"),
    (re.compile(r"^--protocol\b"), "spec.protocol"),
    (re.compile(r"^--drain-timeout\b"), "spec.drainTimeout"),
    (re.compile(r"^--model\b"), "spec.models"),
    (re.compile(r"^models .* each have a rollout"), "spec.models"),
    (re.compile(r"^autoscaling:"), "spec.autoscaling"),
    (re.compile(r"has an autoscaling: block"), "spec.autoscaling"),
    (re.compile(r"resources\.cpu"), "spec.resources.cpu"),
    (re.compile(r"resources\.memory"), "spec.resources.memory"),
    (re.compile(r"^(cannot read|.* is not a folder|.* has no model folders)"), "spec.repository"),
]
_ROLLOUT_FIELD = re.compile(r"\brollout\.((?:[a-z]+)(?:\.[a-z]+)?)")


def render_field(message: str) -> str:
    """The ShoalService field a :class:`RenderError` message is about (the renderer speaks
    in ``shoal k8s render``'s options and ``model.yaml``'s settings)."""
    for pattern, name in _RENDER_FIELDS:
        if pattern.search(message):
            return name
    match = _ROLLOUT_FIELD.search(message)
    if match:
        return f"spec.rollout.{match.group(1)}"
    if "rollout" in message or "canary" in message or "shadow" in message:
        return "spec.rollout"
    return "spec"


# -- what to apply --------------------------------------------------------------------------


def owner_reference(resource: Mapping[str, Any]) -> dict[str, Any]:
    meta = resource["metadata"]
    if not meta.get("uid"):
        raise ValueError(f"ShoalService {meta.get('name')} has no metadata.uid")
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("kind") == KIND for ref in refs)


def desired_objects(resource: Mapping[str, Any], *, repository: str | Path | None = None
                    ) -> Desired:
    """The objects ``resource`` renders to, owned by it.

    ``repository``: a local copy of ``spec.repository`` (the operator fetches object storage
    into its cache); by default ``spec.repository`` itself, which must then be a folder here
    (a remote one would be fetched into a temporary folder on every call). The pods fetch
    ``spec.repository`` themselves (their init container); a ``spec.repository`` that is a
    folder means the repository baked into the image at ``/models``.
    """
    check(resource)
    options = render_options(dict(resource))
    source = str(options.pop("repository"))
    if is_remote(source):
        options["uri"] = source
    owner = owner_reference(resource)
    namespace = resource["metadata"]["namespace"]
    with _RENDER_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeployWarning)
        try:
            objects = render(repository if repository is not None else source, **options)
        except RenderError as exc:
            raise InvalidSpec(render_field(str(exc)), str(exc)) from None
    notes = [str(w.message) for w in caught if issubclass(w.category, DeployWarning)]
    for obj in objects:
        meta = obj["metadata"]
        meta["namespace"] = namespace
        meta["ownerReferences"] = [dict(owner)]
        meta.setdefault("annotations", {})[HASH_ANNOTATION] = fingerprint(obj)
    return Desired(objects, notes)


def is_subset(wanted: Any, live: Any) -> bool:
    """Whether every field of ``wanted`` has the same value in ``live`` (which may have more:
    defaults the API server filled in, a status); lists match item by item."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and is_subset(v, live[k]) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (isinstance(live, list) and len(wanted) == len(live)
                and all(is_subset(a, b) for a, b in zip(wanted, live)))
    return bool(wanted == live)


def needs_apply(wanted: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """``live`` is missing, was rendered from something else (its fingerprint differs: a
    field may have to go), or someone changed a field the operator sets."""
    if live is None:
        return True
    applied = (live.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)
    if applied != wanted["metadata"]["annotations"][HASH_ANNOTATION]:
        return True
    return not is_subset(wanted, live)


def plan(desired: list[dict[str, Any]], live: Mapping[Key, Mapping[str, Any] | None]
         ) -> list[tuple[Verb, dict[str, Any]]]:
    """For each desired object: ``create`` (not there), ``apply`` (differs) or ``keep``."""
    out: list[tuple[Verb, dict[str, Any]]] = []
    for obj in desired:
        current = live.get(key(obj))
        verb: Verb = "create" if current is None else (
            "apply" if needs_apply(obj, current) else "keep")
        out.append((verb, obj))
    return out


def stale(desired: list[dict[str, Any]], existing: list[Mapping[str, Any]], uid: str
          ) -> list[Mapping[str, Any]]:
    """Objects owned by the ShoalService ``uid`` that the render no longer has."""
    wanted = {key(o) for o in desired}
    return [o for o in existing if owned_by(o, uid) and key(o) not in wanted]


# -- what is observed -----------------------------------------------------------------------


def _condition(obj: Mapping[str, Any] | None, kind: str) -> bool:
    if not obj:
        return False
    status = obj.get("status") or {}
    generation = obj.get("metadata", {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return False
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in status.get("conditions") or [])


def _variant(resource: Mapping[str, Any], role: str, label: str) -> str:
    """The variant a role serves, as the ShoalService names it (``"3"``, ``"iris-xgb"``),
    else from the unit's ``version`` label (``v3`` -> ``3``)."""
    rollout = (resource.get("spec") or {}).get("rollout") or {}
    if role == "stable" and rollout.get("stable"):
        return str(rollout["stable"])
    if role in ("canary", "shadow") and (rollout.get(role) or {}).get("variant"):
        return str(rollout[role]["variant"])
    match = re.fullmatch(r"v(\d+)", label)
    return match.group(1) if match else label


def _istio_traffic(resource: Mapping[str, Any], desired: list[dict[str, Any]],
                   service: Mapping[str, Any]) -> list[dict[str, Any]]:
    roles = {d["metadata"]["labels"].get("version"): d["metadata"]["labels"].get(ROLE_LABEL)
             for d in desired if d["kind"] == "Deployment"}
    out: list[dict[str, Any]] = []
    for route in (service.get("spec") or {}).get("http") or []:
        for entry in route.get("route") or []:
            subset = entry.get("destination", {}).get("subset", "")
            role = roles.get(subset) or "stable"
            out.append({"variant": _variant(resource, role, subset), "role": role,
                        "percent": entry.get("weight", 100)})
        mirror = route.get("mirror")
        if mirror:
            percent = (route.get("mirrorPercentage") or {}).get("value", 100.0)
            label = mirror.get("subset") or mirror.get("host", "")
            out.append({"variant": _variant(resource, "shadow", label), "role": "shadow",
                        "percent": percent})
        break  # the one route render writes
    return out


def _knative_traffic(resource: Mapping[str, Any], service: Mapping[str, Any]
                     ) -> list[dict[str, Any]]:
    name = resource["metadata"]["name"]
    entries = (service.get("status") or {}).get("traffic") or \
        (service.get("spec") or {}).get("traffic") or []
    template = (service.get("spec") or {}).get("template") or {}
    current = (template.get("metadata") or {}).get("labels", {}).get("version", "")
    out: list[dict[str, Any]] = []
    for entry in entries:
        role = entry.get("tag") if entry.get("tag") in ("stable", "canary") else "stable"
        revision = entry.get("revisionName")
        match = re.fullmatch(rf"{re.escape(name)}-(.+)-[0-9a-f]{{7}}", revision or "")
        label = match.group(1) if match else (current if revision is None else revision)
        item: dict[str, Any] = {"variant": _variant(resource, role, label), "role": role,
                                "percent": entry.get("percent", 0)}
        if revision:
            item["revisionName"] = revision
        if entry.get("tag"):
            item["tag"] = entry["tag"]
        out.append(item)
    return out


def replacements_waiting(desired: list[dict[str, Any]],
                         live: Mapping[Key, Mapping[str, Any] | None]) -> list[str]:
    """What must come up before an old Deployment may be deleted: every desired Deployment
    ``Available`` and every Knative Service ``Ready`` (each as rolled out: its
    ``observedGeneration`` caught up). Empty when nothing is waited for."""
    waiting = []
    for obj in desired:
        current = live.get(key(obj))
        what = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] == "Deployment" and not _condition(current, "Available"):
            waiting.append(f"{what} is not Available")
        elif obj["apiVersion"].startswith("serving.knative.dev/") \
                and not _condition(current, "Ready"):
            waiting.append(f"{what} (Knative) is not Ready")
    return waiting


def observe(resource: Mapping[str, Any], desired: list[dict[str, Any]],
            live: Mapping[Key, Mapping[str, Any] | None]) -> Observation:
    """Readiness, URL and traffic split from the live objects.

    Ready: every desired object exists, every Deployment is ``Available`` and the Knative
    Service ``Ready`` (each for its current generation). Traffic: the VirtualService's
    weights and mirror, or the Knative Service's traffic (its status once Knative reports
    it); empty when the split stays inside the Shoal process (standard mode without Istio:
    ``shoal rollout status`` shows it).
    """
    meta = resource["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    waiting: list[str] = []
    url = f"http://{name}.{namespace}.svc.cluster.local:{HTTP_PORT}"
    traffic: list[dict[str, Any]] = []
    for obj in desired:
        current = live.get(key(obj))
        what = f"{obj['kind']} {obj['metadata']['name']}"
        if current is None:
            waiting.append(f"{what} is missing")
            continue
        if obj["kind"] == "Deployment" and not _condition(current, "Available"):
            waiting.append(f"{what} is not Available")
        elif obj["apiVersion"].startswith("serving.knative.dev/"):
            if not _condition(current, "Ready"):
                waiting.append(f"{what} (Knative) is not Ready")
            url = (current.get("status") or {}).get("url") or \
                f"http://{name}.{namespace}.svc.cluster.local"
            traffic = _knative_traffic(resource, current)
        elif obj["kind"] == "VirtualService":
            traffic = _istio_traffic(resource, desired, current)
    if waiting:
        return Observation(False, "Progressing", "; ".join(waiting), url, traffic)
    return Observation(True, "Available", "every object is there and ready", url, traffic)


# -- status ---------------------------------------------------------------------------------


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: bool | None, reason: str, message: str) -> dict[str, Any]:
    text = "Unknown" if status is None else ("True" if status else "False")
    return {"type": kind, "status": text, "reason": reason, "message": message}


def merge_conditions(old: list[Mapping[str, Any]] | None, new: list[dict[str, Any]],
                     generation: int | None, at: str) -> list[dict[str, Any]]:
    """``new`` conditions, each keeping the old ``lastTransitionTime`` when its status did
    not change (a condition changes time only when it flips); others are kept."""
    previous = {c.get("type"): c for c in old or []}
    out: list[dict[str, Any]] = []
    for item in new:
        merged = dict(item)
        before = previous.get(item["type"])
        same = before is not None and before.get("status") == item["status"]
        merged["lastTransitionTime"] = before.get("lastTransitionTime", at) if same and before \
            else at
        if generation is not None:
            merged["observedGeneration"] = generation
        out.append(merged)
    seen = {c["type"] for c in new}
    out += [dict(c) for c in old or [] if c.get("type") not in seen]
    return out


def _status(resource: Mapping[str, Any], conditions: list[dict[str, Any]], at: str | None,
            **fields: Any) -> dict[str, Any]:
    generation = resource.get("metadata", {}).get("generation")
    old = (resource.get("status") or {}).get("conditions")
    status: dict[str, Any] = {"conditions": merge_conditions(old, conditions, generation,
                                                             at or now())}
    if generation is not None:
        status["observedGeneration"] = generation
    status.update(fields)
    return status


def status_for(resource: Mapping[str, Any], reconciled: dict[str, Any],
               seen: Observation, at: str | None = None) -> dict[str, Any]:
    """The status after a reconcile (``reconciled``: the ``Reconciled`` condition) and an
    observation of the live objects."""
    ready = condition("Ready", seen.ready, seen.reason, seen.message)
    return _status(resource, [ready, reconciled], at, url=seen.url, traffic=seen.traffic)


def invalid_status(resource: Mapping[str, Any], error: InvalidSpec,
                   at: str | None = None) -> dict[str, Any]:
    """Ready and Reconciled ``False``, reason ``InvalidSpec``, the message naming the field.
    What runs from an earlier valid spec is left running (and its url / traffic stay)."""
    message = str(error)
    return _status(resource, [condition("Ready", False, "InvalidSpec", message),
                              condition("Reconciled", False, "InvalidSpec", message)], at)


def failed_status(resource: Mapping[str, Any], reason: str, message: str,
                  at: str | None = None) -> dict[str, Any]:
    """Reconciled ``False`` (``RepositoryUnavailable``, ``ApplyFailed``): the operator
    retries; Ready is left as last observed."""
    return _status(resource, [condition("Reconciled", False, reason, message)], at)


def same_status(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` would change nothing (every field of it is already there)."""
    return is_subset(new, old or {})
