"""TLS and mutual TLS on the gRPC port, with certificates made by openssl."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest

from recall_engine._proto import recall_pb2, recall_pb2_grpc
from tests.harness import catalog_of, make_config, serve

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _run(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _cert(folder, name: str, ca: str, san: str = "") -> None:
    _run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-subj",
        f"/CN={name}",
        "-out",
        f"{name}.csr",
        cwd=folder,
    )
    ext = folder / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _run(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        f"{name}.crt",
        "-extfile",
        ext.name,
        cwd=folder,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    _run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        cwd=d,
    )
    _cert(d, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    _cert(d, "client", "ca")
    return d


def _config(tmp_path, certs, mutual: bool):
    tls = {"cert": str(certs / "server.crt"), "key": str(certs / "server.key")}
    if mutual:
        tls["client_ca"] = str(certs / "ca.crt")
    return make_config(
        {"tls": tls, "channels": {"a": {"plugin": "fixed", "params": {"items": ["i1"]}}}}, tmp_path
    )


def _call(port: int, creds: grpc.ChannelCredentials | None):
    target = f"localhost:{port}"
    channel = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    with channel:
        stub = recall_pb2_grpc.RecallServiceStub(channel)
        return stub.Recall(recall_pb2.RecallRequest(user_id="u", k=1), timeout=5)


def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(tmp_path, certs):
    with serve(_config(tmp_path, certs, mutual=False), catalog_of(["i1"])) as s:
        creds = grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes())
        assert list(_call(s.port, creds).item_ids) == ["i1"]
        with pytest.raises(grpc.RpcError) as e:
            _call(s.port, None)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(tmp_path, certs):
    with serve(_config(tmp_path, certs, mutual=True), catalog_of(["i1"])) as s:
        ca = (certs / "ca.crt").read_bytes()
        with pytest.raises(grpc.RpcError) as e:
            _call(s.port, grpc.ssl_channel_credentials(ca))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        creds = grpc.ssl_channel_credentials(
            ca, (certs / "client.key").read_bytes(), (certs / "client.crt").read_bytes()
        )
        assert list(_call(s.port, creds).item_ids) == ["i1"]
