"""The ``shoal`` command group; each subcommand group lives in a module of its own."""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shoal")
def main() -> None:
    """Shoal: serve models over V2 (REST + gRPC), V1 / TF Serving and the Seldon protocol,
    and steer them (rollouts)."""
