"""``shoal k8s``: Kubernetes objects for a model repository.

    shoal k8s render s3://models/prod --name fraud --image ghcr.io/acme/shoal:1.0 --mode knative
    shoal k8s render ./models --name fraud --image IMAGE --autoscaler hpa --istio -o deploy/
    shoal k8s crd

A thin layer over :mod:`shoal.deploy` (``render``, ``to_yaml``, ``write_kustomize``, ``crd``).
``shoal k8s view`` runs inside the rendered pods (their ``view`` init container).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from .main import main


@main.group()
def k8s() -> None:
    """Render Kubernetes objects (Deployment or Knative, HPA / KEDA, Istio) for a repository."""


@k8s.command()
@click.argument("repository")
@click.option("--name", required=True, help="Name of the Service / Deployment / Knative Service.")
@click.option("--image", required=True, help="The Shoal image (see the Dockerfile).")
@click.option("--mode", type=click.Choice(["standard", "knative"]), default="standard",
              show_default=True, help="Deployment + Service, or a Knative Service.")
@click.option("--autoscaler", type=click.Choice(["none", "hpa", "keda"]), default="none",
              show_default=True, help="Standard mode: an HPA or a KEDA ScaledObject from the "
                                      "models' autoscaling: blocks.")
@click.option("--metric", type=click.Choice(["concurrency", "cpu", "gpu"]),
              default="concurrency", show_default=True,
              help="What HPA / KEDA scale on: shoal_requests_in_flight per pod, CPU "
                   "utilisation, or DCGM GPU utilisation (KEDA).")
@click.option("--istio", is_flag=True, help="Standard mode: canary and shadow through an Istio "
                                            "VirtualService and DestinationRule.")
@click.option("--protocol", type=click.Choice(["rest", "grpc"]), default="rest",
              show_default=True, help="Knative: the one port it routes (gRPC as h2c).")
@click.option("--model", "models", multiple=True, help="Serve only this model (repeatable).")
@click.option("--uri", default=None,
              help="Where the pods fetch the repository (default: REPOSITORY when it is in "
                   "object storage; for a folder, the image's /models).")
@click.option("--namespace", "-n", default=None, help="metadata.namespace of every object.")
@click.option("--drain-timeout", type=click.FloatRange(0), default=30.0, show_default=True,
              help="The server's --drain-timeout; terminationGracePeriodSeconds adds 10 s.")
@click.option("--replicas", type=click.IntRange(0), default=1, show_default=True,
              help="Pods without an autoscaler.")
@click.option("--cpu-target", type=click.IntRange(1, 100), default=80, show_default=True,
              help="--metric cpu: target CPU utilisation (percent of the request).")
@click.option("--gpu-target", type=click.IntRange(1, 100), default=80, show_default=True,
              help="--metric gpu: target GPU utilisation (percent).")
@click.option("--prometheus-url", default="http://prometheus-operated.monitoring.svc:9090",
              show_default=True, help="KEDA: the Prometheus its triggers query.")
@click.option("--no-monitor", is_flag=True, help="No ServiceMonitor / PodMonitor.")
@click.option("--service-account", default=None, help="The pods' service account.")
@click.option("--storage-secret", default=None,
              help="Secret whose keys become the fetch container's environment "
                   "(AWS_ACCESS_KEY_ID, ...).")
@click.option("--admin-token-secret", default=None,
              help="Secret with key 'token': the server's --admin-token (SHOAL_ADMIN_TOKEN).")
@click.option("--stable-revision", default=None,
              help="Knative: the running revision a canary's traffic keeps (default: the one "
                   "these settings render without the canary).")
@click.option("--output", "-o", "output", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Write a kustomize base to this folder instead of stdout.")
def render(repository: str, name: str, image: str, mode: str, autoscaler: str, metric: str,
           istio: bool, protocol: str, models: tuple[str, ...], uri: str | None,
           namespace: str | None, drain_timeout: float, replicas: int, cpu_target: int,
           gpu_target: int, prometheus_url: str, no_monitor: bool, service_account: str | None,
           storage_secret: str | None, admin_token_secret: str | None,
           stable_revision: str | None, output: Path | None) -> None:
    """Print the Kubernetes objects that serve REPOSITORY (a folder or s3://, gs://, https://)."""
    from ..deploy import RenderError, to_yaml, write_kustomize
    from ..deploy import render as render_objects

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            objects = render_objects(
                repository, name=name, image=image, mode=mode, autoscaler=autoscaler,
                istio=istio, uri=uri, models=list(models) or None, metric=metric,
                protocol=protocol, namespace=namespace, drain_timeout=drain_timeout,
                replicas=replicas, cpu_target=cpu_target, gpu_target=gpu_target,
                prometheus_url=prometheus_url, monitor=not no_monitor,
                service_account=service_account, storage_secret=storage_secret,
                admin_token_secret=admin_token_secret, stable_revision=stable_revision,
            )
        except RenderError as exc:
            raise click.ClickException(str(exc)) from None
    for warning in caught:
        click.echo(f"note: {warning.message}", err=True)
    if output is None:
        click.echo(to_yaml(objects), nl=False)
        return
    paths = write_kustomize(objects, output)
    click.echo(f"wrote {len(paths)} files to {output} (kubectl apply -k {output})", err=True)


@k8s.command()
def crd() -> None:
    """Print the ShoalService CustomResourceDefinition (kubectl apply -f -)."""
    from ..deploy.crd import crd_yaml

    click.echo(crd_yaml(), nl=False)


@k8s.command(hidden=False)
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--plan", required=True, help="JSON: which models and versions, from where.")
def view(source: Path, dest: Path, plan: str) -> None:
    """In a pod: lay out the repository a unit serves (links into SOURCE) at DEST."""
    from ..deploy.view import ViewError, build_view, parse_plan
    from ..errors import ShoalError

    try:
        built = build_view(source, dest, parse_plan(plan))
    except (ViewError, ShoalError, OSError, ValueError) as exc:
        click.echo(f"shoal k8s view: {exc}", err=True)
        sys.exit(1)
    click.echo(f"laid out {built}", err=True)


# ``shoal k8s operator-manifests`` lives with the operator's command; importing it here
# registers it whenever the ``k8s`` group is loaded (the CLI imports groups lazily).
from . import operator as _operator  # noqa: E402,F401
