"""Kubernetes: render a model repository into the objects that serve it.

Python API (``shoal k8s render`` and ``shoal k8s crd`` are thin layers over it, and the
ShoalService operator reconciles what it returns)::

    from shoal.deploy import render, to_yaml, write_kustomize

    objects = render(
        "s3://models/prod",              # or a local folder; a remote one is fetched to read it
        name="fraud",                    # the Service / Deployment / Knative Service name
        image="ghcr.io/acme/shoal:1.0",
        mode="standard",                 # or "knative"
        autoscaler="hpa",                # "none" (default), "hpa" or "keda"; standard mode only
        istio=True,                      # VirtualService + DestinationRule; standard mode only
    )                                    # -> list[dict], one dict per Kubernetes object
    print(to_yaml(objects))              # one multi-document YAML
    write_kustomize(objects, "deploy/")  # kustomization.yaml + one file per object

``render(repository, *, name, image, mode="standard", autoscaler="none", istio=False,
uri=None, models=None, **options) -> list[dict]``

- ``repository``: a folder, or an object-storage URI (``s3://``, ``gs://``, ``https://``)
  read with :func:`shoal.repository.sources.fetch_repository`. The settings come from the
  models' ``model.yaml`` files (autoscaling, rollout, workers, resources, max_inflight,
  timeout).
- ``uri``: where the pods fetch the repository (an init container runs ``shoal fetch``).
  Default: ``repository`` when it is remote; for a folder, None: the pods serve the
  repository baked into the image at ``/models``.
- ``models``: serve only these models of the repository.
- ``options`` (keyword, :class:`~shoal.deploy.spec.DeploySpec` fields): ``metric``
  (``"concurrency"``, ``"cpu"`` or ``"gpu"``), ``protocol`` (Knative's one port: ``"rest"``
  or ``"grpc"``), ``namespace``, ``drain_timeout`` (30), ``replicas`` (1, without an
  autoscaler), ``cpu_target`` (80), ``gpu_target`` (80), ``prometheus_url``, ``monitor``
  (True: a ServiceMonitor or PodMonitor), ``service_account``, ``storage_secret``,
  ``admin_token_secret``, ``stable_revision`` (Knative), and ``autoscaling_override``,
  ``rollout_override`` (may name its ``model``), ``resources_override``, which replace what
  the files say (a ShoalService's spec).

Raises :class:`RenderError` (a ``ValueError``) naming the option or the setting at fault;
settings that cannot be expressed (a canary's progressive steps, stickiness) are rendered as
far as they can be and reported with :class:`DeployWarning` (``warnings``).

``render_spec(spec: DeploySpec) -> list[dict]``: the same from a built spec
(``DeploySpec(name=..., image=..., models=read_repository(Path(...)), ...)``).

``to_yaml(objects) -> str``; ``write_kustomize(objects, directory) -> list[Path]``.

The CRD: ``crd() -> dict``, ``crd_yaml() -> str``, ``validate_resource(obj)`` (jsonschema
against its ``openAPIV3Schema``), ``render_options(obj) -> dict`` (``render()``'s keyword
arguments for a ShoalService: ``render(**render_options(obj))``).

In the pod: ``build_view(source, dest, plan)`` (``shoal k8s view``) lays out the repository
one unit serves; see :mod:`shoal.deploy.units` for how a rollout's variants become units.
"""

from __future__ import annotations

from .crd import API_VERSION, KIND, crd, crd_yaml, render_options, validate_resource
from .kustomize import to_yaml, write_kustomize
from .render import render, render_spec
from .spec import DeploySpec, ModelInfo, RenderError, read_repository
from .units import DeployWarning
from .view import build_view

__all__ = [
    "API_VERSION", "KIND", "DeploySpec", "DeployWarning", "ModelInfo", "RenderError",
    "build_view", "crd", "crd_yaml", "read_repository", "render", "render_options",
    "render_spec", "to_yaml", "validate_resource", "write_kustomize",
]
