"""A development certificate authority for mutual TLS between fedgrpo services.

``init_ca(dir)`` writes ``ca.crt`` / ``ca.key``. ``issue(dir, name, role=)``
signs a leaf certificate for identity ``name`` with that CA and returns its
``Identity`` (``<name>.crt``, ``<name>.key``, ``ca.crt``): CN = name, SANs for
the name, localhost, 127.0.0.1, ::1 and any extra hosts, the role as a SAN URI
``fedgrpo:role=<role>`` (``ROLES``), and both serverAuth and clientAuth,
because every role is a server to some peers and a client of others (a
service checks its own health with its own certificate; dialed reward clients
serve, joined ones connect). The service names ``orchestrator`` and
``trainer`` are reserved: only a certificate of that role may be issued
under one, and no reward client may carry one as a host (gRPC would accept a
reward-client certificate naming host ``orchestrator`` for that address;
``init_federation`` gives such shared hosts to the services only).
``init_federation(dir)`` does both for a whole federation, plus a shared
``api-token``, and is idempotent; it reissues identities of an older
``make certs`` that carry no role. ``common_name(pem)`` and ``role_of(pem)``
read a peer's certificate, which is how a service learns who called it.
``export(dir, name, out)`` hands one identity its own folder: its
certificate, its key and ``ca.crt`` (the orchestrator's also the
``api-token``), never ``ca.key``; that is how compose gives each container
only its own secrets.

Keys are EC P-256; private keys and the token are written with mode 0o600,
every file atomically (temporary file, then rename), so a crash never leaves
half a key behind. This is for development and closed deployments: there is
no revocation, and whoever holds ``ca.key`` can mint any identity.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgrpo.atomic_file import replace_file

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
API_TOKEN = "api-token"

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# What a certificate's holder may act as; services check their peer's (fedgrpo.security.peer_role).
ROLES = ("orchestrator", "trainer", "reward_client")
# Names only a certificate of the same role may carry (as its name or as a host).
RESERVED = {"orchestrator": "orchestrator", "trainer": "trainer"}
ROLE_URI = "fedgrpo:role="
_DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
# Certificates start slightly in the past so a peer whose clock lags a little
# does not reject a certificate issued a moment ago.
_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Identity:
    """The files one service or client needs for mutual TLS."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> Identity:
        directory = Path(directory)
        return cls(directory / f"{name}.crt", directory / f"{name}.key", directory / CA_CERT)

    def exists(self) -> bool:
        return self.cert.exists() and self.key.exists() and self.ca.exists()


def init_ca(
    directory: Path, common_name: str = "fedgrpo development CA", days: int = 825, *, overwrite: bool = False
) -> None:
    """Write a new CA (``ca.crt``, ``ca.key``) into ``directory``."""
    directory = Path(directory)
    _check_days(days)
    if (directory / CA_KEY).exists() and not overwrite:
        raise FileExistsError(
            f"{directory / CA_KEY} already exists; pass overwrite=True to replace the CA "
            "(every identity it signed stops being trusted)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Certificate first: an existing ca.key then always means a complete CA.
    replace_file(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False)
    replace_file(directory / CA_KEY, _key_pem(key), private=True)


def default_role(name: str) -> str:
    """The role ``name`` gets unless told: a reserved service name's own, else reward_client."""
    return RESERVED.get(name, "reward_client")


def issue(
    directory: Path, name: str, hosts: Sequence[str] = (), days: int = 825, out_dir: Path | None = None,
    role: str | None = None,
) -> Identity:
    """Sign a client-and-server certificate for ``name`` acting as ``role`` (default: ``default_role(name)``)."""
    directory = Path(directory)
    role = default_role(name) if role is None else role
    _check_name(name)
    _check_role(name, role, hosts)
    _check_days(days)
    sans = [*_subject_alt_names(name, hosts), x509.UniformResourceIdentifier(ROLE_URI + role)]
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    # A leaf that outlives its CA would only fail later and more confusingly.
    expires = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(expires)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    identity = Identity.in_dir(Path(out_dir) if out_dir is not None else directory, name)
    identity.cert.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if identity.ca != directory / CA_CERT:
        replace_file(identity.ca, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    replace_file(identity.key, _key_pem(key), private=True)
    replace_file(identity.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return identity


def init_federation(
    directory: Path,
    services: Sequence[str] = ("orchestrator", "trainer"),
    clients: Sequence[str] = (),
    hosts: Sequence[str] = (),
    overwrite: bool = False,
) -> dict[str, Identity]:
    """A CA (reused if present), one identity per service and client, and an API token.

    Existing identities signed by this CA are kept unless ``overwrite``; the CA
    and the token are never replaced (delete them to rotate).
    """
    directory = Path(directory)
    reserved = [name for name in clients if name in RESERVED]
    if reserved:
        raise ValueError(f"client name(s) {reserved}: reserved for the services of those names")
    roles = {name: default_role(name) for name in services} | {name: "reward_client" for name in clients}
    if len(roles) < len(services) + len(clients):
        raise ValueError(f"a name is given twice among services {list(services)} and clients {list(clients)}")
    for name, role in roles.items():
        _check_name(name)
        _check_role(name, role, _hosts_of(role, hosts))
    if not (directory / CA_KEY).exists():
        init_ca(directory)
    ca_cert, _ = _load_ca(directory)
    identities = {}
    for name, role in roles.items():
        identity = Identity.in_dir(directory, name)
        if overwrite or not _issued_by(identity, ca_cert) or role_of(identity.cert.read_bytes()) != role:
            identity = issue(directory, name, _hosts_of(role, hosts), role=role)
        identities[name] = identity
    token = directory / API_TOKEN
    if not token.exists():
        replace_file(token, (secrets.token_urlsafe(32) + "\n").encode(), private=True)
    return identities


def export(
    directory: Path,
    name: str,
    out_dir: Path,
    with_api_token: bool = False,
    owner: tuple[int, int] | None = None,
) -> Identity:
    """Copy identity ``name`` from the CA folder into ``out_dir`` without the CA key.

    ``out_dir`` gets ``<name>.crt``, ``<name>.key``, ``ca.crt`` and, with
    ``with_api_token``, the ``api-token``; anything else there is left alone.
    ``owner`` (uid, gid) hands the folder and its files to the user a
    container runs as (the caller must be allowed to chown: root).
    """
    directory, out_dir = Path(directory), Path(out_dir)
    source = Identity.in_dir(directory, name)
    if not source.exists():
        raise ValueError(f"no identity {name!r} in {directory}: run `fedgrpo certs init` or `certs issue {name}` first")
    if out_dir.resolve() == directory.resolve():
        raise ValueError(f"export {name!r} into a folder of its own, not the CA folder {directory}")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = Identity.in_dir(out_dir, name)
    files = [(source.cert, target.cert, False), (source.key, target.key, True), (source.ca, target.ca, False)]
    if with_api_token:
        files.append((directory / API_TOKEN, out_dir / API_TOKEN, True))
    for origin, path, private in files:
        replace_file(path, origin.read_bytes(), private=private)
    if owner is not None:
        for path in [out_dir] + [path for _, path, _ in files]:
            os.chown(path, *owner)
    os.chmod(out_dir, 0o700)
    return target


def common_name(pem: bytes) -> str:
    """The subject CN of a PEM certificate (a peer's fedgrpo identity)."""
    cert = x509.load_pem_x509_certificate(pem)
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        raise ValueError(f"certificate {cert.subject.rfc4514_string()!r} has no common name")
    return str(values[0].value)


def role_of(pem: bytes) -> str | None:
    """The role a PEM certificate carries (SAN URI ``fedgrpo:role=<role>``), or None (issued before roles)."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound:
        return None
    roles = [uri[len(ROLE_URI):] for uri in uris if uri.startswith(ROLE_URI)]
    return roles[0] if len(roles) == 1 and roles[0] in ROLES else None


def _hosts_of(role: str, hosts: Sequence[str]) -> list[str]:
    """The shared hosts of `init_federation` for one role: a reserved service name goes to services only."""
    return [h for h in hosts if role != "reward_client" or h not in RESERVED]


def _check_role(name: str, role: str, hosts: Sequence[str]) -> None:
    if role not in ROLES:
        raise ValueError(f"role {role!r} of {name!r}: expected one of {', '.join(ROLES)}")
    owner = RESERVED.get(name)
    if owner is not None and owner != role:
        raise ValueError(f"identity name {name!r}: reserved for the {owner} (role {owner}), not role {role}")
    taken = [h for h in hosts if h in RESERVED] if role == "reward_client" else []
    if taken:
        raise ValueError(f"hosts {taken} of {name!r}: reserved for the services of those names, not a reward_client")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"identity name {name!r}: expected 1-64 letters, digits, '-', '_' or '.'")
    if name.lower() == "ca":
        raise ValueError(f"identity name {name!r}: reserved for the CA's own files")


def _check_days(days: int) -> None:
    if not isinstance(days, int) or days < 1:
        raise ValueError(f"days {days!r}: expected a positive whole number")


def _subject_alt_names(name: str, hosts: Sequence[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for host in (name, *_DEFAULT_SANS, *hosts):
        if not isinstance(host, str) or not host or not host.isascii() or any(c.isspace() for c in host):
            raise ValueError(f"host {host!r}: expected a DNS name or an IP address")
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        if san not in sans:
            sans.append(san)
    return sans


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not (cert_path.exists() and key_path.exists()):
        raise FileNotFoundError(
            f"no CA in {directory} (need {CA_CERT} and {CA_KEY}): run `fedgrpo certs init` first"
        )
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ValueError(f"{key_path} is not the private key of {cert_path}")
    return cert, key


def _issued_by(identity: Identity, ca_cert: x509.Certificate) -> bool:
    if not identity.exists():
        return False
    try:
        x509.load_pem_x509_certificate(identity.cert.read_bytes()).verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
