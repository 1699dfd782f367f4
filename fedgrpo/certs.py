"""A development certificate authority for mutual TLS between fedgrpo services.

``init_ca(dir)`` writes ``ca.crt`` / ``ca.key``. ``issue(dir, name)`` signs a
leaf certificate for identity ``name`` with that CA and returns its
``Identity`` (``<name>.crt``, ``<name>.key``, ``ca.crt``): CN = name, SANs for
the name, localhost, 127.0.0.1, ::1 and any extra hosts, and both serverAuth
and clientAuth, because every fedgrpo service is a server to some peers and a
client of others. ``init_federation(dir)`` does both for a whole federation,
plus a shared ``api-token``, and is idempotent. ``common_name(pem)`` reads the
CN of a peer's certificate, which is how a service learns who called it.

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
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
API_TOKEN = "api-token"

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
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
    _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(directory / CA_KEY, _key_pem(key), private=True)


def issue(
    directory: Path, name: str, hosts: Sequence[str] = (), days: int = 825, out_dir: Path | None = None
) -> Identity:
    """Sign a client-and-server certificate for ``name`` with the CA in ``directory``."""
    directory = Path(directory)
    _check_name(name)
    _check_days(days)
    sans = _subject_alt_names(name, hosts)
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
        _write(identity.ca, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(identity.key, _key_pem(key), private=True)
    _write(identity.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
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
    names = [*services, *clients]
    for name in names:
        _check_name(name)
    if not (directory / CA_KEY).exists():
        init_ca(directory)
    ca_cert, _ = _load_ca(directory)
    identities = {}
    for name in names:
        identity = Identity.in_dir(directory, name)
        if overwrite or not _issued_by(identity, ca_cert):
            identity = issue(directory, name, hosts)
        identities[name] = identity
    token = directory / API_TOKEN
    if not token.exists():
        _write(token, (secrets.token_urlsafe(32) + "\n").encode(), private=True)
    return identities


def common_name(pem: bytes) -> str:
    """The subject CN of a PEM certificate (a peer's fedgrpo identity)."""
    cert = x509.load_pem_x509_certificate(pem)
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        raise ValueError(f"certificate {cert.subject.rfc4514_string()!r} has no common name")
    return str(values[0].value)


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


def _write(path: Path, data: bytes, private: bool) -> None:
    """Replace ``path`` atomically; mkstemp creates the file 0o600 from the start."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not private:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
