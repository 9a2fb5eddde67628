"""TLS on both ports (--tls-cert, --tls-key) and client certificates (--tls-ca), with a CA and
certificates this test makes."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import IDENTITY, custom
from .process import ShoalProcess

BODY = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1, 2]}]}


# ---- certificates -------------------------------------------------------------------------


@dataclass
class Issued:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return Issued(cert_path, key_path)


class CertificateAuthority:
    def __init__(self, folder: Path, name: str = "Shoal test CA") -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.name = _name(name)
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.files = _write(folder, name.replace(" ", "-").lower(), self.cert, self.key)

    def issue(self, stem: str, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(self.name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return _write(self.folder, stem, builder.sign(self.key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder)
    other = CertificateAuthority(folder, "Other CA")
    return {"ca": ca.files.cert, "server": ca.issue("server", server=True),
            "client": ca.issue("client", server=False),
            "stranger": other.issue("stranger", server=False)}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls-repository")
    custom(root / "identity", IDENTITY)
    return root


# ---- clients ------------------------------------------------------------------------------


def client_context(ca: Path, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


def https(server: ShoalProcess) -> str:
    return f"https://127.0.0.1:{server.http_port}"


def wait_ready(server: ShoalProcess, context: ssl.SSLContext, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{https(server)}/v2/health/ready", verify=context, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.proc.poll() is not None:
            raise RuntimeError(f"shoal serve died: {server.logs()}")
        time.sleep(0.05)
    raise TimeoutError("server did not become ready")


def grpc_credentials(ca: Path, client: Issued | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(), private_key=client.key.read_bytes(),
        certificate_chain=client.cert.read_bytes())


def grpc_infer(server: ShoalProcess, credentials: grpc.ChannelCredentials) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name="identity")
    request.inputs.add(name="x", datatype="FP64", shape=[2]).contents.fp64_contents.extend([1, 2])
    with grpc.secure_channel(server.grpc_target, credentials) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        return stub.ModelInfer(request, timeout=10)


def tls_args(pki: dict, ca: bool = False) -> list[str]:
    server: Issued = pki["server"]  # type: ignore[assignment]
    args = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    return [*args, "--tls-ca", str(pki["ca"])] if ca else args


# ---- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [[], ["--http-workers", "2"]], ids=["one-process", "http-workers"])
def test_rest_and_grpc_over_tls(repository: Path, pki: dict, workers: list[str]) -> None:
    ca: Path = pki["ca"]  # type: ignore[assignment]
    server = ShoalProcess(repository, *tls_args(pki), *workers)
    try:
        assert server.listening["tls"] is True
        context = client_context(ca)
        wait_ready(server, context)
        with httpx.Client(verify=context) as client:
            for _ in range(4):  # new connections: with --http-workers, more than one process
                answer = httpx.post(f"{https(server)}/v2/models/identity/infer", json=BODY,
                                    verify=context)
                assert answer.status_code == 200
                assert answer.json()["outputs"][0]["data"] == [1, 2]
            # Keep-alive and a body over several TLS records pass the HTTP protocol's limits.
            big = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [20000],
                               "data": list(range(20000))}]}
            assert client.post(f"{https(server)}/v2/models/identity/infer", json=big).status_code == 200
            assert client.get(f"{https(server)}/v2/models/identity").status_code == 200
            # The head-size limit holds over TLS too (its answer needs no write_eof).
            huge = client.get(f"{https(server)}/v2/models/identity", headers={"x-big": "a" * 70_000})
            assert huge.status_code == 431
        # Plain HTTP to the TLS port gets no answer.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/v2/health/live", timeout=5)
        # A client that does not trust the CA refuses the server.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{https(server)}/v2/health/live", timeout=5)

        response = grpc_infer(server, grpc_credentials(ca))
        assert list(response.outputs[0].contents.fp64_contents) == [1, 2]
        with grpc.insecure_channel(server.grpc_target) as channel, \
                pytest.raises(grpc.RpcError) as plain:
            pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0


def test_client_certificates_required_on_both_ports(repository: Path, pki: dict) -> None:
    ca: Path = pki["ca"]  # type: ignore[assignment]
    client: Issued = pki["client"]  # type: ignore[assignment]
    stranger: Issued = pki["stranger"]  # type: ignore[assignment]
    server_files: Issued = pki["server"]  # type: ignore[assignment]
    # Set through the environment, as a container would.
    server = ShoalProcess(repository, env={
        "SHOAL_TLS_CERT": str(server_files.cert), "SHOAL_TLS_KEY": str(server_files.key),
        "SHOAL_TLS_CA": str(ca)})
    try:
        assert server.listening["tls"] is True
        wait_ready(server, client_context(ca, client))
        answer = httpx.post(f"{https(server)}/v2/models/identity/infer", json=BODY,
                            verify=client_context(ca, client))
        assert answer.status_code == 200
        for refused in (client_context(ca), client_context(ca, stranger)):
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{https(server)}/v2/health/live", verify=refused, timeout=5)

        response = grpc_infer(server, grpc_credentials(ca, client))
        assert list(response.outputs[0].contents.fp64_contents) == [1, 2]
        for refused_credentials in (grpc_credentials(ca), grpc_credentials(ca, stranger)):
            with pytest.raises(grpc.RpcError) as refused:
                grpc_infer(server, refused_credentials)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0


def shoal_serve(repository: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shoal", "serve", str(repository), "--http-port", "0",
         "--grpc-port", "0", *args], capture_output=True, text=True, timeout=60, check=False)


def test_tls_settings_that_cannot_work_stop_the_server_clearly(
        repository: Path, pki: dict, tmp_path: Path) -> None:
    server: Issued = pki["server"]  # type: ignore[assignment]
    client: Issued = pki["client"]  # type: ignore[assignment]
    alone = shoal_serve(repository, "--tls-cert", str(server.cert))
    assert alone.returncode == 2 and "--tls-key is missing" in alone.stderr
    alone = shoal_serve(repository, "--tls-key", str(server.key))
    assert alone.returncode == 2 and "--tls-cert is missing" in alone.stderr
    ca_only = shoal_serve(repository, "--tls-ca", str(pki["ca"]))
    assert ca_only.returncode == 2 and "--tls-ca" in ca_only.stderr
    missing = shoal_serve(repository, "--tls-cert", str(tmp_path / "nope.pem"),
                          "--tls-key", str(server.key))
    assert missing.returncode == 2 and "nope.pem" in missing.stderr and "does not exist" in missing.stderr

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for args, named in [
        (["--tls-cert", str(garbage), "--tls-key", str(server.key)], garbage),
        (["--tls-cert", str(server.cert), "--tls-key", str(garbage)], garbage),
        (["--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-ca", str(garbage)],
         garbage),
        (["--tls-cert", str(server.cert), "--tls-key", str(server.key), "--http-workers", "2",
          "--tls-ca", str(garbage)], garbage),
    ]:
        failed = shoal_serve(repository, *args)
        assert failed.returncode == 1, failed.stderr
        assert f"{named} is not PEM" in failed.stderr
        assert '"listening"' not in failed.stdout  # stopped before binding
    mismatch = shoal_serve(repository, "--tls-cert", str(server.cert), "--tls-key", str(client.key))
    assert mismatch.returncode == 1
    assert "does not belong to the certificate" in mismatch.stderr and str(client.key) in mismatch.stderr

    if os.geteuid() != 0:  # root reads any file
        unreadable = tmp_path / "unreadable.pem"
        unreadable.write_bytes(server.key.read_bytes())
        unreadable.chmod(0)
        failed = shoal_serve(repository, "--tls-cert", str(server.cert), "--tls-key", str(unreadable))
        assert failed.returncode != 0 and "unreadable.pem" in failed.stderr


def test_shoal_clients_speak_tls_and_present_client_certificates(repository: Path, pki: dict) -> None:
    """The Python client and the shoal commands against a --tls-ca server, over REST and gRPC."""
    from shoal.client import Client, ShoalClientError

    ca: Path = pki["ca"]  # type: ignore[assignment]
    client: Issued = pki["client"]  # type: ignore[assignment]
    server = ShoalProcess(repository, *tls_args(pki, ca=True))
    try:
        wait_ready(server, client_context(ca, client))
        for grpc_address in (None, server.grpc_target):
            with Client(https(server), grpc=grpc_address, cafile=str(ca), certfile=str(client.cert),
                        keyfile=str(client.key)) as connected:
                assert connected.infer("identity", {"x": [1.0, 2.0]})["x"].tolist() == [1.0, 2.0]
            with Client(https(server), grpc=grpc_address, cafile=str(ca)) as anonymous:
                with pytest.raises(ShoalClientError):  # no client certificate: refused
                    anonymous.models()
        command = [sys.executable, "-m", "shoal", "models", "--url", https(server), "--cacert", str(ca),
                   "--cert", str(client.cert), "--key", str(client.key)]
        listed = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert "identity" in listed.stdout
        over_grpc = subprocess.run([*command, "--grpc-address", server.grpc_target], capture_output=True,
                                   text=True, timeout=60)
        assert over_grpc.returncode == 0, over_grpc.stderr
        refused = subprocess.run(command[:-4], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and refused.stderr.startswith("error:")
    finally:
        assert server.stop() == 0
