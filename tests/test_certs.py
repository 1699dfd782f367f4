"""The development CA: what it signs, what it writes, and that gRPC mutual TLS accepts it."""

from __future__ import annotations

import ipaddress
import os
import stat
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedgrpo import certs
from fedgrpo.cli import main


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_client_certificate_is_signed_by_the_ca_for_client_and_server_use(tmp_path):
    identities = certs.init_federation(tmp_path, clients=["client-0"], hosts=["10.0.0.7", "trainer.internal"])
    client = identities["client-0"]
    assert client == certs.Identity.in_dir(tmp_path, "client-0") and client.exists()

    cert, ca = _cert(client.cert), _cert(tmp_path / certs.CA_CERT)
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "client-0"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"client-0", "localhost", "trainer.internal"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(ip) for ip in ("127.0.0.1", "::1", "10.0.0.7")
    }
    assert set(identities) == {"orchestrator", "trainer", "client-0"}


def test_private_files_are_owner_only(tmp_path):
    identities = certs.init_federation(tmp_path)
    assert _mode(tmp_path / certs.CA_KEY) == 0o600
    assert _mode(tmp_path / certs.API_TOKEN) == 0o600
    assert all(_mode(identity.key) == 0o600 for identity in identities.values())
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_init_federation_is_idempotent_and_overwrite_reissues(tmp_path):
    def snapshot() -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in sorted(tmp_path.iterdir())}

    certs.init_federation(tmp_path, clients=["a"])
    first = snapshot()
    certs.init_federation(tmp_path, clients=["a"])
    assert snapshot() == first

    certs.init_federation(tmp_path, clients=["a"], overwrite=True)
    second = snapshot()
    for name in ("a.crt", "a.key", "trainer.crt", "orchestrator.key"):
        assert second[name] != first[name]
    # The CA and the token outlive a reissue, so identities signed elsewhere stay valid.
    for name in (certs.CA_CERT, certs.CA_KEY, certs.API_TOKEN):
        assert second[name] == first[name]


def test_identity_from_another_ca_is_reissued(tmp_path):
    certs.init_federation(tmp_path / "other")
    certs.init_ca(tmp_path / "ours")
    stale = certs.Identity.in_dir(tmp_path / "ours", "trainer")
    for kind in ("crt", "key"):
        (tmp_path / "ours" / f"trainer.{kind}").write_bytes((tmp_path / "other" / f"trainer.{kind}").read_bytes())
    certs.init_federation(tmp_path / "ours")
    _cert(stale.cert).verify_directly_issued_by(_cert(stale.ca))


def test_init_ca_refuses_to_replace_a_ca(tmp_path):
    certs.init_ca(tmp_path)
    with pytest.raises(FileExistsError, match="ca.key"):
        certs.init_ca(tmp_path)
    before = (tmp_path / certs.CA_KEY).read_bytes()
    certs.init_ca(tmp_path, overwrite=True)
    assert (tmp_path / certs.CA_KEY).read_bytes() != before


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "../escape", "client/0", "ca", "naïve"])
def test_invalid_names_are_refused(tmp_path, name):
    certs.init_ca(tmp_path)
    with pytest.raises(ValueError, match="identity name"):
        certs.issue(tmp_path, name)


def test_issue_into_another_folder_brings_the_ca_certificate(tmp_path):
    certs.init_ca(tmp_path / "ca")
    identity = certs.issue(tmp_path / "ca", "client-9", out_dir=tmp_path / "client")
    assert identity == certs.Identity.in_dir(tmp_path / "client", "client-9") and identity.exists()
    assert not (tmp_path / "client" / certs.CA_KEY).exists()
    assert certs.common_name(identity.cert.read_bytes()) == "client-9"
    assert certs.common_name(identity.ca.read_bytes()) == "fedgrpo development CA"


def test_cli_init_and_issue(tmp_path, capsys):
    main(["certs", "init", "--dir", str(tmp_path), "--clients", "a, b", "--hosts", "10.1.2.3"])
    out = capsys.readouterr().out
    assert str(tmp_path / certs.API_TOKEN) in out and str(tmp_path / "b.key") in out
    assert all(certs.Identity.in_dir(tmp_path, name).exists() for name in ("orchestrator", "trainer", "a", "b"))

    main(["certs", "issue", "late-client", "--dir", str(tmp_path), "--hosts", "late.example"])
    cert = _cert(tmp_path / "late-client.crt")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "late.example" in sans.get_values_for_type(x509.DNSName)


def test_cli_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="run `fedgrpo certs init` first"):
        main(["certs", "issue", "x", "--dir", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="identity name 'a b'"):
        main(["certs", "init", "--dir", str(tmp_path), "--clients", "a b"])
    with pytest.raises(SystemExit, match="host 'bad host'"):
        main(["certs", "issue", "x", "--dir", str(tmp_path), "--hosts", "bad host"])


def _serve(identity: certs.Identity) -> tuple[grpc.Server, int]:
    """Health plus a `Who` method answering with the caller's certificate CN."""

    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        auth = context.auth_context()
        assert certs.common_name(auth["x509_pem_cert"][0]) == auth["x509_common_name"][0].decode()
        return auth["x509_common_name"][0]

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Whoami", {"Who": grpc.unary_unary_rpc_method_handler(who)})]
    )
    credentials = grpc.ssl_server_credentials(
        [(identity.key.read_bytes(), identity.cert.read_bytes())],
        root_certificates=identity.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


def _channel(identity: certs.Identity, port: int, trusting: Path | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        (trusting or identity.ca).read_bytes(), identity.key.read_bytes(), identity.cert.read_bytes()
    )
    return grpc.secure_channel(f"localhost:{port}", credentials)


def test_mutual_tls_admits_our_identities_and_rejects_another_ca(tmp_path):
    ours = certs.init_federation(tmp_path / "ours", clients=["client-0"])
    theirs = certs.init_federation(tmp_path / "theirs", clients=["client-0"])
    server, port = _serve(ours["trainer"])
    try:
        with _channel(ours["client-0"], port) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert channel.unary_unary("/test.Whoami/Who")(b"", timeout=10) == b"client-0"

        # Same name, other CA: refused even when it trusts our CA, so the server's check is what stops it.
        for trusting in (None, ours["trainer"].ca):
            with _channel(theirs["client-0"], port, trusting) as channel:
                with pytest.raises(grpc.RpcError) as failure:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_identities_carry_their_role(tmp_path):
    identities = certs.init_federation(tmp_path, clients=["client-0"])
    assert {n: certs.role_of(i.cert.read_bytes()) for n, i in identities.items()} == {
        "orchestrator": "orchestrator", "trainer": "trainer", "client-0": "reward_client",
    }
    uris = x509.load_pem_x509_certificate(identities["client-0"].cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["fedgrpo:role=reward_client"]


@pytest.mark.parametrize(
    ("issue", "message"),
    [
        (lambda d: certs.issue(d, "orchestrator", role="reward_client"), "reserved for the orchestrator"),
        (lambda d: certs.issue(d, "trainer", role="orchestrator"), "reserved for the trainer"),
        (lambda d: certs.issue(d, "client-9", hosts=["orchestrator"]), "hosts ['orchestrator']"),
        (lambda d: certs.issue(d, "client-9", role="admin"), "role 'admin'"),
        (lambda d: certs.init_federation(d, clients=["trainer"]), "client name(s) ['trainer']: reserved"),
    ],
)
def test_service_names_are_reserved_for_their_role(tmp_path, issue, message):
    certs.init_federation(tmp_path)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        issue(tmp_path)


def test_init_federation_reissues_an_identity_without_a_role(tmp_path):
    certs.init_federation(tmp_path, clients=["client-0"], hosts=["orchestrator", "example.org"])
    client = certs.Identity.in_dir(tmp_path, "client-0")
    sans = x509.load_pem_x509_certificate(client.cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    assert "orchestrator" not in sans and "example.org" in sans  # a shared service name is not the client's
    # A certificate without a role (here the CA's own: signed by the CA, no role URI) is reissued;
    # an identity that has its role is kept.
    kept = certs.Identity.in_dir(tmp_path, "trainer").cert.read_bytes()
    client.cert.write_bytes((tmp_path / "ca.crt").read_bytes())
    assert certs.role_of(client.cert.read_bytes()) is None
    certs.init_federation(tmp_path, clients=["client-0"])
    assert certs.role_of(client.cert.read_bytes()) == "reward_client"
    assert certs.Identity.in_dir(tmp_path, "trainer").cert.read_bytes() == kept


def test_export_hands_an_identity_its_own_folder_and_nothing_else(tmp_path):
    certs.init_federation(tmp_path / "ca", clients=["org-a"])
    owner = (os.getuid(), os.getgid())
    identity = certs.export(tmp_path / "ca", "org-a", tmp_path / "org-a", owner=owner)
    assert identity == certs.Identity.in_dir(tmp_path / "org-a", "org-a")
    assert sorted(p.name for p in (tmp_path / "org-a").iterdir()) == ["ca.crt", "org-a.crt", "org-a.key"]
    assert identity.key.read_bytes() == (tmp_path / "ca" / "org-a.key").read_bytes()
    assert stat.S_IMODE(identity.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "org-a").stat().st_mode) == 0o700
    assert (identity.key.stat().st_uid, identity.key.stat().st_gid) == owner
    token = certs.export(tmp_path / "ca", "orchestrator", tmp_path / "orch", with_api_token=True)
    assert (token.cert.parent / certs.API_TOKEN).read_bytes() == (tmp_path / "ca" / certs.API_TOKEN).read_bytes()
    with pytest.raises(ValueError, match="no identity 'org-b'"):
        certs.export(tmp_path / "ca", "org-b", tmp_path / "org-b")
    with pytest.raises(ValueError, match="not the CA folder"):
        certs.export(tmp_path / "ca", "org-a", tmp_path / "ca")
    with pytest.raises(SystemExit, match="--owner applies to --export"):
        main(["certs", "init", "--dir", str(tmp_path / "ca"), "--owner", "1:1"])
    with pytest.raises(SystemExit):
        main(["certs", "init", "--dir", str(tmp_path / "ca"), "--export", str(tmp_path / "x"), "--owner", "fedgrpo"])
