"""Client commands against a running server: ``shoal models``, ``metadata``, ``predict``,
``load``, ``unload``.

A thin layer over :class:`shoal.client.Client`. Every command takes ``--url`` (the REST
address) and ``--grpc`` (talk gRPC to the URL's host on port 8081, or to ``--grpc-address``);
a refusal exits 1 with the server's message on stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .main import main

DEFAULT_URL = "http://127.0.0.1:8080"


def connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--url", "--server", "url", envvar=["SHOAL_URL", "SHOAL_SERVER"],
                     default=DEFAULT_URL, show_default=True, show_envvar=True,
                     help="The server's REST address."),
        click.option("--grpc", "use_grpc", is_flag=True,
                     help="Use V2 gRPC (the URL's host, port 8081, unless --grpc-address)."),
        click.option("--grpc-address", envvar="SHOAL_GRPC_ADDRESS", metavar="HOST:PORT",
                     help="The server's gRPC address (implies --grpc)."),
        click.option("--token", envvar="SHOAL_ADMIN_TOKEN", default=None, show_envvar=True,
                     help="The server's --admin-token (for load and unload)."),
        click.option("--cacert", envvar="SHOAL_CACERT", type=click.Path(exists=True, dir_okay=False),
                     help="CA certificate to trust for an https:// server (or gRPC over TLS)."),
        click.option("--cert", envvar="SHOAL_CLIENT_CERT", type=click.Path(exists=True, dir_okay=False),
                     help="Client certificate (PEM) for a server started with --tls-ca."),
        click.option("--key", envvar="SHOAL_CLIENT_KEY", type=click.Path(exists=True, dir_okay=False),
                     help="The client certificate's key (PEM), if not in --cert's file."),
        click.option("--timeout", type=click.FloatRange(0, min_open=True), default=30.0,
                     show_default=True, help="Seconds to wait for an answer."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def connect(url: str, use_grpc: bool, grpc_address: str | None, token: str | None,
            cacert: str | None, cert: str | None, key: str | None, timeout: float) -> Any:
    from ..client.errors import ShoalClientError
    from ..client.inference import Client

    try:
        return Client(url, grpc=grpc_address or use_grpc or None, token=token, timeout=timeout,
                      cafile=cacert, certfile=cert, keyfile=key)
    except ShoalClientError as exc:
        fail(exc)


def fail(exc: Any) -> None:
    status = f" (HTTP {exc.status})" if exc.status else ""
    code = f" ({exc.code})" if getattr(exc, "code", None) else status
    click.echo(f"error: {exc.message}{code}", err=True)
    sys.exit(1)


def run(call: Callable[[], Any]) -> Any:
    from ..client.errors import ShoalClientError

    try:
        return call()
    except ShoalClientError as exc:
        fail(exc)


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


@main.command()
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
def models(as_json: bool, **connection: Any) -> None:
    """Every model and graph of the server's repository: versions, state and reason."""
    with connect(**connection) as client:
        rows = run(client.models)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    lines = [("MODEL", "VERSION", "STATE", "REASON")]
    lines += [(r.get("name", ""), r.get("version", ""), r.get("state", ""), r.get("reason", "")) for r in rows]
    click.echo(table(lines) if rows else "no models")


@main.command()
@click.argument("model")
@click.option("--version", "version", default=None, help="A version (default: the one served).")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
def metadata(model: str, version: str | None, as_json: bool, **connection: Any) -> None:
    """MODEL's inputs and outputs."""
    with connect(**connection) as client:
        meta = run(lambda: client.metadata(model, version))
    if as_json:
        click.echo(json.dumps(meta, indent=2))
        return
    click.echo(f"{meta['name']}  versions {', '.join(meta.get('versions') or [])}  "
               f"platform {meta.get('platform', '')}")
    rows = [("", "NAME", "DATATYPE", "SHAPE")]
    for kind in ("inputs", "outputs"):
        for tensor in meta.get(kind) or []:
            rows.append((kind[:-1], tensor["name"], tensor["datatype"], str(tensor["shape"])))
    click.echo(table(rows))


@main.command()
@click.argument("model")
@click.option("--data", "data", metavar="JSON",
              help="The input: a JSON array (one input), an object {name: array}, or a whole V2 "
                   "request {\"inputs\": [...]}; - reads it from stdin.")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The input from a .npy, .csv (one row per line) or .json file.")
@click.option("--output", "outputs", multiple=True, metavar="NAME", help="Ask for this output (repeatable).")
@click.option("--version", "version", default=None, help="A version (default: the one served).")
@click.option("--v1", "v1", is_flag=True, help="Use V1 / TF Serving :predict with {\"instances\": ...}.")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
def predict(model: str, data: str | None, file: Path | None, outputs: tuple[str, ...],
            version: str | None, v1: bool, as_json: bool, **connection: Any) -> None:
    """Send one inference request to MODEL and print its outputs.

    The request is built from the data and the model's metadata: a single input is named
    after the model's input, and a row without a batch axis gets one.
    """
    value = read_data(data, file)
    if v1 and (connection["use_grpc"] or connection["grpc_address"]):
        raise click.UsageError("--v1 is a REST protocol: leave out --grpc")
    with connect(**connection) as client:
        if v1:
            answer = run(lambda: client.predict_v1(model, value, version))
            click.echo(json.dumps(answer, indent=None if as_json else 2))
            return
        wanted, parameters = list(outputs) or None, None
        if isinstance(value, dict) and isinstance(value.get("inputs"), list):
            # A whole V2 request: its inputs, and its outputs and parameters unless given here.
            value, asked, parameters = v2_request(value)
            wanted = wanted or asked
        if as_json:
            if client.target is not None:
                raise click.UsageError("--json prints a REST answer: leave out --grpc")
            answer = run(lambda: client.infer_json(model, value, version, wanted, parameters))
            click.echo(json.dumps(answer))
            return
        result = run(lambda: client.infer(model, value, version, wanted, parameters))
    import numpy as np

    click.echo(f"{result.model_name} version {result.model_version}"
               + (f" ({result.parameters['shoal-variant']})" if "shoal-variant" in result.parameters else ""))
    for name, array in result.outputs.items():
        datatype = result.datatypes.get(name, "")
        click.echo(f"{name}  {datatype}  {list(array.shape)}")
        click.echo(np.array2string(np.asarray(array), threshold=200, separator=", "))


def read_data(data: str | None, file: Path | None) -> Any:
    """The request's input from --data or --file."""
    if (data is None) == (file is None):
        raise click.UsageError("give the input with exactly one of --data or --file")
    if data is not None:
        return parse_json(sys.stdin.read() if data == "-" else data, "--data")
    assert file is not None
    suffix = file.suffix.lower()
    import numpy as np

    if suffix == ".npy":
        try:
            return np.load(file, allow_pickle=False)  # a pickled .npy would run code: refused
        except ValueError as exc:
            raise click.BadParameter(f"{file}: {exc}", param_hint="--file") from None
    if suffix == ".csv":
        return read_csv(file)
    if suffix == ".json":
        return parse_json(file.read_text(), "--file")
    raise click.BadParameter(f"{file}: use a .npy, .csv or .json file", param_hint="--file")


def read_csv(file: Path) -> Any:
    import numpy as np

    for skip in (0, 1):  # a header row, if the first line is not numbers
        try:
            return np.loadtxt(file, delimiter=",", ndmin=2, skiprows=skip)
        except ValueError:
            continue
    raise click.BadParameter(f"{file}: not a CSV file of numbers", param_hint="--file")


def parse_json(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from None


def v2_request(body: dict[str, Any]) -> tuple[Any, list[str] | None, dict[str, Any]]:
    """A V2 JSON request's inputs (datatypes and shapes as given), the outputs it asks for and
    its parameters."""
    from ..errors import ShoalError
    from ..protocol import v2_json

    try:
        request = v2_json.request_from_dict(body)
    except ShoalError as exc:
        raise click.BadParameter(str(exc), param_hint="--data") from None
    asked = [o.name for o in request.outputs] if request.outputs else None
    return request.inputs, asked, request.parameters


def _repository_command(name: str, doc: str) -> None:
    @main.command(name, help=doc)
    @click.argument("model")
    @connection_options
    def command(model: str, **connection: Any) -> None:
        with connect(**connection) as client:
            run(lambda: getattr(client, name)(model))
        click.echo(f"{model}: {name}ed")


_repository_command("load", "Load (or reload) MODEL from the server's repository.")
_repository_command("unload", "Unload MODEL.")
