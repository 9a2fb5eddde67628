"""The ShoalService operator (``shoal operator``, built on kopf).

It watches ``ShoalService`` resources (``serving.shoal.io/v1alpha1``) and keeps the objects
``render(**render_options(resource))`` produces in the cluster: it creates them,
server-side-applies those that differ from the render (and leaves the others untouched, so
a new canary percentage rewrites the VirtualService or the Knative Service and never a
Deployment), deletes the ones a new render no longer has, and writes the status: the
``Ready`` and ``Reconciled`` conditions, the ``url`` and the ``traffic`` split observed.
Every object it applies has an owner reference to its ShoalService, so deleting the
ShoalService deletes them (Kubernetes' garbage collector; the operator adds no finalizer).

Plain functions (no cluster, no kopf), in :mod:`.reconcile`::

    from shoal.deploy.operator import check, desired_objects, plan, observe, status_for

    check(resource)                                  # InvalidSpec naming the field, or None
    desired = desired_objects(resource, repository="/cache/models")  # -> Desired(objects, notes)
    plan(desired.objects, live)                      # [("create"|"apply"|"keep", obj), ...]
    seen = observe(resource, desired.objects, live)  # Observation(ready, reason, message, url, traffic)
    status_for(resource, reconciled_condition, seen) # the status to write

Running it: :func:`run` (async; ``shoal operator`` is a thin layer over it) and
:class:`Operator`; the operator's own ServiceAccount, RBAC and Deployment:
:func:`operator_manifests` (``shoal k8s operator-manifests``). Needs the ``k8s`` extra.
"""

from __future__ import annotations

from .manifests import operator_manifests
from .reconcile import (
    HASH_ANNOTATION,
    Desired,
    InvalidSpec,
    Observation,
    check,
    desired_objects,
    invalid_status,
    needs_apply,
    observe,
    plan,
    stale,
    status_for,
)

__all__ = [
    "HASH_ANNOTATION", "Desired", "InvalidSpec", "Observation", "Operator", "check",
    "desired_objects", "invalid_status", "needs_apply", "observe", "operator_manifests",
    "plan", "run", "stale", "status_for",
]


def __getattr__(name: str):  # the kopf side loads only when it is used
    if name in ("Operator", "run", "find_credentials", "CredentialsError"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(name)
