"""The ``shoal`` command group; each subcommand group lives in a module of its own.

The group imports a subcommand's module only when that command runs (or when every command
is listed, for ``--help``): ``shoal serve`` does not pay for the client, rollout, batch and
Kubernetes commands' imports before its server starts.
"""

from __future__ import annotations

import importlib

import click

from .. import __version__

#: Each command's module, imported when the command is asked for; importing it registers the
#: command on ``main`` (the modules decorate their functions with ``@main.command()``).
COMMAND_MODULES = {
    "batch": "batch",
    "models": "client",
    "metadata": "client",
    "predict": "client",
    "load": "client",
    "unload": "client",
    "rollout": "rollout",
    "fetch": "fetch",
    "serve": "serve",
    "k8s": "k8s",
    "operator": "operator",
}


class LazyGroup(click.Group):
    """A group whose commands are registered by importing their module on first use."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"{__package__}.{COMMAND_MODULES[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        load_all()
        return super().list_commands(ctx)


def load_all() -> None:
    """Import every command's module (``--help`` lists them all)."""
    for module in dict.fromkeys(COMMAND_MODULES.values()):
        importlib.import_module(f"{__package__}.{module}")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shoal")
def main() -> None:
    """Shoal: serve models over V2 (REST + gRPC), V1 / TF Serving and the Seldon protocol,
    and steer them (rollouts)."""
