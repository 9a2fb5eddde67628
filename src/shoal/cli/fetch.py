"""``shoal fetch URI DIR``: mirror a repository from object storage or an archive into a folder,
atomically (each model folder appears complete or not at all), then exit. A Kubernetes init
container runs it so that a pod never serves a half-downloaded model.

``REPOSITORY`` is the click type of every command's repository argument: a local folder (which
must exist) or a URI to fetch (``s3://``, ``gs://``, ``http(s)://``), returned as a ``str``.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from .main import main


class RepositoryParam(click.ParamType):
    """A repository folder (a ``Path``; it must exist) or a URI to fetch it from (a ``str``)."""

    name = "repository"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> Path | str:
        from ..repository.uris import check_uri, is_remote, local_path

        if isinstance(value, Path):
            text = str(value)
        else:
            text = os.fspath(value)  # type: ignore[arg-type]
        try:
            check_uri(text)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if is_remote(text):
            return text
        path = local_path(text)
        if not path.exists():
            self.fail(f"Directory {text!r} does not exist.", param, ctx)
        if not path.is_dir():
            self.fail(f"Directory {text!r} is a file.", param, ctx)
        return path


REPOSITORY = RepositoryParam()

CACHE_DIR_HELP = ("Where repositories from object storage or archives (s3://, gs://, "
                  "https://) are fetched to, one folder per URI "
                  "[default: ~/.cache/shoal/repositories].")


@main.command()
@click.argument("uri", type=REPOSITORY)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="Fetch only this model's folder (into DIRECTORY/NAME); repeatable.")
@click.option("--quiet", "-q", is_flag=True, default=False, help="Print nothing on success.")
def fetch(uri: Path | str, directory: Path, models: tuple[str, ...], quiet: bool) -> None:
    """Fetch the repository at URI (s3://bucket/prefix, gs://bucket/prefix, an https:// tar.gz
    or zip archive, or a folder) into DIRECTORY.

    Each model folder is downloaded beside its place and swapped in complete, so DIRECTORY
    never holds a half-downloaded model; files that did not change are not downloaded again,
    files the store no longer has are removed. Credentials come from the store's usual
    environment (AWS_* and ~/.aws, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS).
    Exits non-zero, with the store's reason, when the repository cannot be read.
    """
    from ..errors import ShoalError
    from ..repository.layout import check_model_name
    from ..repository.sources import sync

    for name in models:
        try:
            check_model_name(name)
        except ShoalError as exc:
            raise click.BadParameter(str(exc), param_hint="--model") from None
    source = uri if isinstance(uri, str) else str(uri.resolve())
    if isinstance(uri, Path) and uri.resolve() == directory.resolve():
        raise click.UsageError("URI and DIRECTORY are the same folder")
    try:
        report = sync(source, directory, list(models) or None)
    except ShoalError as exc:
        raise click.ClickException(str(exc)) from None
    if not quiet:
        click.echo(report.summary())
