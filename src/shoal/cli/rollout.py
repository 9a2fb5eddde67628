"""``shoal rollout``: set, watch and steer a running server's rollouts.

    shoal rollout set iris --stable 2 --canary 3=10 --shadow 4=100
    shoal rollout status iris
    shoal rollout promote iris
    shoal rollout rollback iris

A thin layer over :class:`shoal.client.RolloutClient`; ``--json`` prints the server's answer
as it came.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml

from ..client.rollouts import DEFAULT_URL, RolloutClient, ShoalClientError
from .main import main

_server = click.option("--server", "--url", "server", envvar=["SHOAL_SERVER", "SHOAL_URL"],
                       default=DEFAULT_URL, show_default=True, show_envvar=True,
                       help="The server's HTTP address.")
_tls_options = [
    click.option("--cacert", envvar="SHOAL_CACERT", type=click.Path(exists=True, dir_okay=False),
                 help="CA certificate to trust for an https:// server."),
    click.option("--cert", envvar="SHOAL_CLIENT_CERT", type=click.Path(exists=True, dir_okay=False),
                 help="Client certificate (PEM) for a server started with --tls-ca."),
    click.option("--key", envvar="SHOAL_CLIENT_KEY", type=click.Path(exists=True, dir_okay=False),
                 help="The client certificate's key (PEM), if not in --cert's file."),
]


def _cacert(command: Any) -> Any:
    for option in reversed(_tls_options):
        command = option(command)
    return command
_token = click.option("--token", envvar="SHOAL_ADMIN_TOKEN", default=None, show_envvar=True,
                      help="The server's --admin-token, for changes.")
_json = click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")


@main.group()
def rollout() -> None:
    """Canary, shadow and progressive rollouts of a running server's models."""


def _split(value: str, option: str) -> tuple[str, float | None]:
    """``VARIANT=PERCENT`` (or just ``VARIANT``) from an option's value."""
    variant, sep, percent = value.rpartition("=")
    if not sep:
        return value, None
    try:
        return variant, float(percent)
    except ValueError:
        raise click.BadParameter(f"{value!r}: write VARIANT=PERCENT, e.g. 3=10", param_hint=option) from None


def spec_from_options(
    stable: str | None, canary: str | None, shadow: str | None, sticky: str | None,
    steps: str | None, interval: str | None, max_error_rate: float | None,
    max_latency_ratio: float | None, min_requests: int | None, max_pending: int | None,
) -> dict[str, Any]:
    """The rollout spec the ``set`` options describe (the server checks it)."""
    spec: dict[str, Any] = {}
    if stable is not None:
        spec["stable"] = stable
    analysis: dict[str, Any] = {}
    if steps is not None:
        try:
            analysis["steps"] = [float(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise click.BadParameter(f"{steps!r}: write percentages like 5,25,50,100",
                                     param_hint="--steps") from None
    for key, value in (("interval", interval), ("max_error_rate", max_error_rate),
                       ("max_latency_ratio", max_latency_ratio), ("min_requests", min_requests)):
        if value is not None:
            analysis[key] = value
    if canary is not None:
        variant, percent = _split(canary, "--canary")
        spec["canary"] = {"variant": variant}
        if percent is not None:
            spec["canary"]["percent"] = percent
        if sticky is not None:
            spec["canary"]["sticky"] = sticky
        if analysis:
            spec["canary"]["analysis"] = analysis
    elif analysis or sticky is not None:
        raise click.UsageError("--sticky and the analysis options need a --canary")
    if shadow is not None:
        variant, percent = _split(shadow, "--shadow")
        spec["shadow"] = {"variant": variant}
        if percent is not None:
            spec["shadow"]["percent"] = percent
        if max_pending is not None:
            spec["shadow"]["max_pending"] = max_pending
    elif max_pending is not None:
        raise click.UsageError("--max-pending needs a --shadow")
    return spec


@rollout.command("set")
@click.argument("model")
@click.option("--stable", help="The stable variant [default: where unversioned requests go now].")
@click.option("--canary", metavar="VARIANT=PERCENT",
              help="Canary variant and its share of traffic, e.g. 3=10 (a version) or iris-xgb=5.")
@click.option("--shadow", metavar="VARIANT=PERCENT",
              help="Variant (or http:// URL) that gets a copy of PERCENT of the requests.")
@click.option("--sticky", metavar="EXPR",
              help="JMESPath key over the request: one key, one variant (e.g. 'headers.\"x-user-id\"').")
@click.option("--steps", metavar="P1,P2,...", help="Progressive delivery: percentages, e.g. 5,25,50,100.")
@click.option("--interval", help="Progressive delivery: how long each step lasts (60s, 5m).")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), help="Guard: canary 5xx share.")
@click.option("--max-latency-ratio", type=click.FloatRange(0, min_open=True),
              help="Guard: canary p99 / stable p99.")
@click.option("--min-requests", type=click.IntRange(0), help="Canary requests per step before judging.")
@click.option("--max-pending", type=click.IntRange(1), help="Shadow requests running at once.")
@click.option("-f", "--file", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The whole spec as a YAML or JSON file (instead of the options).")
@_server
@_token
@_cacert
@_json
def set_rollout(model: str, stable: str | None, canary: str | None, shadow: str | None,
                sticky: str | None, steps: str | None, interval: str | None,
                max_error_rate: float | None, max_latency_ratio: float | None,
                min_requests: int | None, max_pending: int | None, spec_file: Path | None,
                server: str, token: str | None, cacert: str | None, cert: str | None,
                key: str | None, as_json: bool) -> None:
    """Set MODEL's rollout live (replacing the one it has)."""
    options = spec_from_options(stable, canary, shadow, sticky, steps, interval, max_error_rate,
                                max_latency_ratio, min_requests, max_pending)
    if spec_file is not None:
        if options:
            raise click.UsageError("give either --file or the rollout options, not both")
        try:
            options = yaml.safe_load(spec_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"not YAML or JSON: {exc}", param_hint="--file") from None
    _run(server, token, as_json, lambda client: client.set(model, options), (cacert, cert, key))


def _action(name: str, doc: str) -> None:
    @rollout.command(name, help=doc)
    @click.argument("model")
    @_server
    @_token
    @_cacert
    @_json
    def command(model: str, server: str, token: str | None, cacert: str | None, cert: str | None,
                key: str | None, as_json: bool) -> None:
        _run(server, token, as_json, lambda client: getattr(client, name)(model), (cacert, cert, key))


_action("promote", "The canary becomes the stable variant and takes all traffic.")
_action("rollback", "Send all traffic back to the stable variant at once (canary to 0%).")
_action("pause", "Stop a progressive rollout where it is.")
_action("resume", "Go on with a paused rollout (the current step starts again).")
_action("delete", "Remove MODEL's rollout: unversioned requests go where they did before it.")


@rollout.command("status")
@click.argument("model")
@click.option("--watch", type=click.FloatRange(0.2), default=None, metavar="SECONDS",
              help="Print the status again every SECONDS until interrupted.")
@_server
@_cacert
@_json
def status(model: str, watch: float | None, server: str, cacert: str | None, cert: str | None,
           key: str | None, as_json: bool) -> None:
    """Per variant: requests, errors, p50/p99 since the last change; shadow agreement."""
    while True:
        _run(server, None, as_json, lambda client: client.status(model), (cacert, cert, key))
        if watch is None:
            return
        time.sleep(watch)
        click.echo()


def _run(server: str, token: str | None, as_json: bool, call: Any,
         tls: tuple[str | None, str | None, str | None] = (None, None, None)) -> None:
    cafile, certfile, keyfile = tls
    try:
        with RolloutClient(server, token, cafile=cafile, certfile=certfile, keyfile=keyfile) as client:
            answer = call(client)
    except ShoalClientError as exc:
        click.echo(f"error: {exc.message}" + (f" (HTTP {exc.status})" if exc.status else ""), err=True)
        sys.exit(1)
    click.echo(json.dumps(answer, indent=2) if as_json else describe(answer))


def describe(status: dict[str, Any]) -> str:
    """A rollout status for a person: one line for the state, one row per variant."""
    if status.get("state") == "none":
        return f"{status['model']}: no rollout"
    head = f"{status['model']}: {status['state']}"
    if "canary" in status.get("variants", {}):
        head += f", canary at {status['canary_percent']:g}%"
    step = status.get("step")
    if step:
        head += f", step {step['index'] + 1} of {step['of']} ({step['interval_seconds']:g} s each)"
    lines = [head, f"  {status.get('reason', '')} ({status.get('window_seconds', 0):.0f} s ago)"]
    rows = [("variant", "target", "requests", "5xx", "4xx", "p50 ms", "p99 ms")]
    for role, figures in status.get("variants", {}).items():
        rows.append((role, figures["variant"], str(figures["requests"]), str(figures["errors"]),
                     str(figures["client_errors"]), _ms(figures["p50_seconds"]),
                     _ms(figures["p99_seconds"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    shadow = status.get("variants", {}).get("shadow")
    if shadow:
        lines.append(f"  shadow: {shadow['pending']} running, {shadow['skipped']} skipped (queue full)")
        for output, figures in shadow["outputs"].items():
            if "agreement" in figures:
                value = "-" if figures["agreement"] is None else f"{figures['agreement']:.1%}"
                measure = f"agreement {value}"
            else:
                value = "-" if figures["mean_abs_difference"] is None else f"{figures['mean_abs_difference']:.6g}"
                measure = f"mean |difference| {value}"
            lines.append(f"    {output}: {measure} over {figures['compared']} values, "
                         f"{figures['mismatches']} mismatched answers")
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"
