"""``shoal operator``: reconcile ShoalService resources; ``shoal k8s operator-manifests``:
the operator's ServiceAccount, RBAC and Deployment.

    shoal k8s crd | kubectl apply -f -
    shoal k8s operator-manifests --image ghcr.io/acme/shoal:1.0 | kubectl apply -f -
    shoal operator --namespace ml          # or --all-namespaces; out of a cluster: KUBECONFIG

Thin layers over :mod:`shoal.deploy.operator` (``run``, ``operator_manifests``). The
``operator-manifests`` command belongs to the ``shoal k8s`` group, next to ``shoal k8s crd``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from .k8s import k8s
from .main import main


@main.command()
@click.option("--namespace", "-n", "namespaces", multiple=True, metavar="NS",
              help="Reconcile the ShoalServices of this namespace (repeatable).")
@click.option("--all-namespaces", "-A", "all_namespaces", is_flag=True,
              help="Reconcile the ShoalServices of every namespace.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where repositories in object storage are fetched to, to render them "
                   "[default: $SHOAL_CACHE_DIR or ~/.cache/shoal/repositories].")
@click.option("--resync", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Seconds between checks of the applied objects (readiness, traffic, "
                   "objects deleted or changed by hand).")
@click.option("--retry-delay", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Seconds before retrying a ShoalService whose repository could not be "
                   "read or whose objects were refused.")
@click.option("--liveness", default=None, metavar="URL",
              help="Serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz.")
@click.option("--no-events", is_flag=True, help="Do not post Kubernetes events.")
@click.option("--verbose", "-v", is_flag=True, help="Log each step.")
def operator(namespaces: tuple[str, ...], all_namespaces: bool, cache_dir: Path | None,
             resync: float, retry_delay: float, liveness: str | None, no_events: bool,
             verbose: bool) -> None:
    """Run the ShoalService operator (kopf) until interrupted.

    Credentials: the pod's service account in a cluster, else the kubeconfig ($KUBECONFIG
    or ~/.kube/config). The ShoalService CRD must be installed first (shoal k8s crd).
    """
    if bool(namespaces) == all_namespaces:
        raise click.UsageError("say which ShoalServices to reconcile: --namespace NS "
                               "(repeatable) or --all-namespaces")
    try:
        from ..deploy.operator.runtime import CredentialsError, find_credentials, run
    except ImportError as exc:
        raise click.ClickException(f"shoal operator needs the k8s extra "
                                   f"(pip install 'shoal[k8s]'): {exc}") from None
    try:
        where = find_credentials()
    except CredentialsError as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:  # kopf logs every handler call at INFO: keep its warnings and errors
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    scope = "every namespace" if all_namespaces else ", ".join(namespaces)
    click.echo(f"shoal operator: reconciling ShoalServices in {scope} ({where})", err=True)
    asyncio.run(run(namespaces=namespaces, clusterwide=all_namespaces, cache_dir=cache_dir,
                    resync=resync, retry_delay=retry_delay, liveness=liveness,
                    post_events=not no_events))


@k8s.command("operator-manifests")
@click.option("--image", required=True,
              help="A Shoal image with the k8s extra (and s3 / gcs for the repositories).")
@click.option("--namespace", "-n", default="shoal-system", show_default=True,
              help="Where the operator runs (the namespace must exist).")
@click.option("--watch-namespace", "watch", multiple=True, metavar="NS",
              help="Reconcile only this namespace (repeatable): a Role in each, nothing "
                   "cluster-wide. Default: every namespace (a ClusterRole).")
@click.option("--storage-secret", default=None,
              help="Secret whose keys become the operator's environment (AWS_ACCESS_KEY_ID, "
                   "...), to read the repositories.")
@click.option("--resync", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="The operator's --resync.")
def operator_manifests(image: str, namespace: str, watch: tuple[str, ...],
                       storage_secret: str | None, resync: float) -> None:
    """Print the operator's ServiceAccount, RBAC and Deployment (kubectl apply -f -)."""
    from ..deploy import to_yaml
    from ..deploy.operator.manifests import operator_manifests as build

    click.echo(to_yaml(build(image=image, namespace=namespace, watch=list(watch) or None,
                             storage_secret=storage_secret, resync=resync)), nl=False)
