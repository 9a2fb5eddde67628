"""``render()``: a repository and a few options in, Kubernetes objects out."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ShoalError
from .istio import render_istio
from .knative import render_knative
from .spec import DeploySpec, RenderError, check_pod_uri, read_repository
from .standard import render_standard
from .units import plan_units


def display(uri: str) -> str:
    """``uri`` as messages show it: without a password, user or query (a presigned URL's
    signature)."""
    try:
        from ..repository.uris import display as shown
    except ImportError:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(uri)
        return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))
    return shown(uri)


def is_remote(uri: str) -> bool:
    try:
        from ..repository.uris import is_remote as remote
    except ImportError:  # without the object-storage sources, every URI is remote
        return "://" in uri and not uri.startswith("file://")
    return bool(remote(uri))


@contextlib.contextmanager
def local_copy(repository: str | Path) -> Iterator[Path]:
    """The repository as a local folder: itself, or fetched from object storage into a
    temporary folder (with the same fetch code the pods run) for as long as it is read."""
    text = str(repository)
    if not is_remote(text):
        yield Path(text.removeprefix("file://"))
        return
    from ..repository.sources import fetch_repository

    with tempfile.TemporaryDirectory(prefix="shoal-render-") as cache:
        try:
            folder = Path(fetch_repository(text, cache_dir=Path(cache)))
        except (ShoalError, OSError, ValueError) as exc:  # the store's reason, not a traceback
            raise RenderError(f"cannot read {display(text)}: {exc}") from None
        yield folder


def render_spec(spec: DeploySpec) -> list[dict[str, Any]]:
    """The objects for an already built :class:`DeploySpec`."""
    layout = plan_units(spec)
    if spec.mode == "knative":
        return render_knative(spec, layout)
    objects = render_standard(spec, layout)
    if spec.istio:
        objects += render_istio(spec, layout)
    return objects


def render(repository: str | Path, *, name: str, image: str, mode: str = "standard",
           autoscaler: str = "none", istio: bool = False, uri: str | None = None,
           models: list[str] | None = None, **options: Any) -> list[dict[str, Any]]:
    """Kubernetes objects (dicts) that serve ``repository`` as ``name`` with ``image``.

    See :mod:`shoal.deploy` for every option.
    """
    remote = is_remote(str(repository))
    if uri is None and remote:
        uri = str(repository)
    if uri is not None:  # before reading the repository: refused the same, whether it exists
        check_pod_uri(uri)
    with local_copy(repository) as root:
        found = read_repository(root, models)
        spec = DeploySpec(name=name, image=image, models=found, uri=uri, mode=mode,  # type: ignore[arg-type]
                          autoscaler=autoscaler, istio=istio,  # type: ignore[arg-type]
                          fetch_only=bool(models), **options)
        return render_spec(spec)
