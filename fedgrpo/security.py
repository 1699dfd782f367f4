"""Transport security and request guards shared by every fedgrpo service.

Each service is either given an identity (``--tls-cert``, ``--tls-key`` and
the federation CA ``--tls-ca``; ``make certs`` writes a development CA) or
runs with ``--plaintext``, an explicit development setting that is refused on
anything but a loopback address. With an identity, servers speak TLS and, on
service-to-service ports, require the peer's certificate (mutual TLS); the
peer's identity is the certificate's common name (``peer_identity``).

``Guard`` is the server interceptor that bounds every request before a
servicer sees it, in this order: a bearer token where the endpoint asks for
one (UNAUTHENTICATED), checked from the call's metadata before its body is
decoded, with failed checks limited per peer address (past
``auth_failure_limit``, every call from that address that needs a token is
RESOURCE_EXHAUSTED until the window passes); the peer's identity against an
allow-list and the role its certificate carries (``fedgrpo.certs``) against
the endpoint's roles (PERMISSION_DENIED; a certificate from before roles is
refused with a message saying to reissue it), a request rate per peer
(RESOURCE_EXHAUSTED, via the ``limits`` package), and a request that does
not decode as its message (INVALID_ARGUMENT). Each refusal carries a
``google.rpc.ErrorInfo`` whose reason says which (UNAUTHENTICATED,
AUTH_FAILURES_LIMITED, PEER_NOT_ALLOWED, ROLE_MISSING, ROLE_NOT_ALLOWED,
RATE_LIMITED, UNDECODABLE_REQUEST; ``fedgrpo.rpc_errors``). Health checks and reflection
are exempt from tokens and rates so orchestration tools can probe a
service, and their handlers pass through unwrapped: the health Watch stream
is non-blocking only as gRPC registered it (a wrapped one holds a worker
thread while open). Oversized messages are
refused by gRPC itself (RESOURCE_EXHAUSTED) from the size options of
``serving``.
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import logging
import socket
import ssl
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from fedgrpo.rpc_errors import abort

log = logging.getLogger(__name__)

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
AUTHORIZATION = "authorization"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Identity:
    """A service's certificate, its key and the federation CA, read from PEM files."""

    cert: bytes
    key: bytes
    ca: bytes

    @classmethod
    def load(cls, cert: Path, key: Path, ca: Path) -> Identity:
        return cls(Path(cert).read_bytes(), Path(key).read_bytes(), Path(ca).read_bytes())

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> Identity:
        """Identity ``name`` of a `fedgrpo certs init` folder (``<name>.crt``, ``<name>.key``, ``ca.crt``)."""
        from fedgrpo import certs

        files = certs.Identity.in_dir(Path(directory), name)
        return cls.load(files.cert, files.key, files.ca)

    def server_credentials(self, client_auth: bool) -> grpc.ServerCredentials:
        """TLS with this identity; ``client_auth`` requires a CA-signed client certificate (mTLS)."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=client_auth
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def peer_identity(context: grpc.ServicerContext) -> str | None:
    """The common name of the peer's verified certificate, or None (plaintext / no certificate)."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None


def peer_role(context: grpc.ServicerContext) -> str | None:
    """The role in the peer's verified certificate (``fedgrpo.certs.role_of``), or None (none, or no certificate)."""
    from fedgrpo.certs import role_of

    pems = context.auth_context().get("x509_pem_cert")
    return role_of(pems[0]) if pems else None


def server_identity(address: str, identity: Identity, timeout: float) -> str:
    """The common name of the certificate the TLS server at ``address`` presents to ``identity``.

    gRPC's Python client does not expose the peer's certificate, so this is
    a TLS handshake of its own (ALPN h2, verified against the federation CA
    and the address like gRPC's, with ``identity``'s client certificate, as
    the server asks for one). Raises OSError (unreachable, not TLS) or
    ssl.SSLError (not signed by the CA, not valid for the address).
    """
    from fedgrpo.certs import common_name

    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=identity.ca.decode())
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as folder:  # ssl loads a client certificate from files only (0o700 folder)
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert.write_bytes(identity.cert)
        key.touch(mode=0o600)
        key.write_bytes(identity.key)
        context.load_cert_chain(cert, key)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError(f"{address} presented no certificate")
    return common_name(ssl.DER_cert_to_PEM_cert(der).encode())


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry; the scheme is case-insensitive (RFC 7235)."""
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def read_tokens(path: Path) -> frozenset[str]:
    """Tokens of a tokens file: one per line; blank lines and '#' comments ignored."""
    lines = (line.strip() for line in Path(path).read_text().splitlines())
    tokens = frozenset(line for line in lines if line and not line.startswith("#"))
    if not tokens:
        raise ValueError(f"{path} holds no token")
    short = [t for t in tokens if len(t) < 16]
    if short:
        raise ValueError(f"{path}: tokens must be at least 16 characters ({len(short)} shorter)")
    return tokens


class _Undecodable:
    """Stands in for a request whose bytes are not the method's message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as err:  # protobuf raises DecodeError; anything else is as malformed
            return _Undecodable(err)

    return decode


def _refuse_undecodable(method: str, request: _Undecodable, context: grpc.ServicerContext) -> None:
    problem = f"not a valid message for {method} ({type(request.error).__name__})"
    abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"request: {problem}", reason="UNDECODABLE_REQUEST",
          field="request", problem=problem)


def _decoded(method: str, requests: Any, context: grpc.ServicerContext) -> Any:
    """A request stream whose first undecodable message ends the call with INVALID_ARGUMENT."""
    for request in requests:
        if isinstance(request, _Undecodable):
            _refuse_undecodable(method, request, context)
        yield request


class Guard(grpc.ServerInterceptor):
    """Refuses unauthenticated, unauthorised, too frequent and undecodable requests."""

    def __init__(
        self,
        *,
        tokens: Collection[str] = (),
        allowed_peers: Collection[str] = (),
        allowed_roles: Collection[str] = (),
        rate_limit: str = "",
        service_label: str = "",
        auth_failure_limit: str = "",
    ) -> None:
        self.tokens = tuple(tokens)
        self.allowed_peers = frozenset(allowed_peers)
        self.allowed_roles = frozenset(allowed_roles)
        self.limits = parse_many(rate_limit) if rate_limit else []
        self.limiter = MovingWindowRateLimiter(MemoryStorage()) if self.limits else None
        self.label = service_label
        self.auth_limits = parse_many(auth_failure_limit) if auth_failure_limit and self.tokens else []
        self.auth_failures = MovingWindowRateLimiter(MemoryStorage()) if self.auth_limits else None

    def _token_ok(self, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        token = bearer_token(metadata)
        return token is not None and any(hmac.compare_digest(token, t) for t in self.tokens)

    def _blocked(self, address: str) -> bool:
        """Whether ``address`` used up its failed token checks (within the limits' window)."""
        return self.auth_failures is not None and not all(
            self.auth_failures.test(limit, self.label, address) for limit in self.auth_limits
        )

    def _refuse_token(self, context: grpc.ServicerContext) -> None:
        """Abort a call whose token failed: UNAUTHENTICATED, or RESOURCE_EXHAUSTED past the failure limit."""
        address = context.peer().rsplit(":", 1)[0]  # the address, not the port: a new connection is no new peer
        if self.auth_failures is not None and not all(
            [self.auth_failures.hit(limit, self.label, address) for limit in self.auth_limits]
        ):
            abort(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"authorization: more than {'; '.join(str(x) for x in self.auth_limits)} failed token checks from "
                f"{address}; calls from it are refused until the window passes",
                reason="AUTH_FAILURES_LIMITED",
            )
        abort(
            context, grpc.StatusCode.UNAUTHENTICATED,
            "authorization: missing or unknown bearer token (metadata 'authorization: Bearer <token>')",
            reason="UNAUTHENTICATED",
        )

    def check(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        """Abort the call unless it may proceed (its token was checked before decoding)."""
        exempt = method.startswith(EXEMPT_PREFIXES)
        if self.tokens and not exempt and self._blocked(context.peer().rsplit(":", 1)[0]):
            # A right token from an address past its failure limit waits too: guesses are not answered faster.
            self._refuse_token(context)
        peer = peer_identity(context)
        if self.allowed_peers and not exempt and peer not in self.allowed_peers:
            abort(
                context, grpc.StatusCode.PERMISSION_DENIED,
                f"identity {peer!r} may not call {method}: only {', '.join(sorted(self.allowed_peers))} may "
                f"(certificate common names; health checks are open to any)",
                reason="PEER_NOT_ALLOWED",
            )
        if self.allowed_roles and not exempt:
            role = peer_role(context)
            if role is None:
                abort(
                    context, grpc.StatusCode.PERMISSION_DENIED,
                    f"identity {peer!r}: its certificate carries no role (issued before roles): re-run `make certs` "
                    "(fedgrpo certs init) to reissue it, or `fedgrpo certs issue NAME --role ROLE`",
                    reason="ROLE_MISSING",
                )
            if role not in self.allowed_roles:
                abort(
                    context, grpc.StatusCode.PERMISSION_DENIED,
                    f"identity {peer!r} has role {role}; only role {', '.join(sorted(self.allowed_roles))} may call "
                    f"{method}",
                    reason="ROLE_NOT_ALLOWED",
                )
        if self.limiter is not None and not exempt:
            key = peer or context.peer().rsplit(":", 1)[0]
            if not all(self.limiter.hit(limit, self.label, key) for limit in self.limits):
                abort(
                    context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"rate limit {'; '.join(str(x) for x in self.limits)} exceeded for {key}; slow down and retry",
                    reason="RATE_LIMITED",
                )
        if isinstance(request, _Undecodable):
            _refuse_undecodable(method, request, context)

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if method.startswith(EXEMPT_PREFIXES):
            return handler
        if self.tokens and not self._token_ok(handler_call_details.invocation_metadata):
            # Refuse from the metadata alone: the handler reads no request (a stream handler is
            # never made to), so a 16 MiB body from someone without a token is never decoded.
            refuse = self._refuse_token

            def refused(_requests, context):  # type: ignore[no-untyped-def]
                refuse(context)

            return grpc.stream_unary_rpc_method_handler(refused)
        check = self.check
        deserializer = _tolerant(handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            def unary_unary(request, context):  # type: ignore[no-untyped-def]
                check(method, request, context)
                return inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)
        if handler.unary_stream:
            inner_us = handler.unary_stream

            def unary_stream(request, context):  # type: ignore[no-untyped-def]
                check(method, request, context)
                yield from inner_us(request, context)

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)
        if handler.stream_unary:
            inner_su = handler.stream_unary

            def stream_unary(requests, context):  # type: ignore[no-untyped-def]
                check(method, None, context)
                return inner_su(_decoded(method, requests, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)
        inner_ss = handler.stream_stream

        def stream_stream(requests, context):  # type: ignore[no-untyped-def]
            check(method, None, context)
            yield from inner_ss(_decoded(method, requests, context), context)

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call of a channel (plaintext or TLS)."""

    def __init__(self, token: str) -> None:
        self.metadata = (AUTHORIZATION, f"Bearer {token}")

    def _details(self, d):  # type: ignore[no-untyped-def]
        return _CallDetails(
            d.method, d.timeout, [*(d.metadata or ()), self.metadata], d.credentials,
            getattr(d, "wait_for_ready", None), getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request)


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """``channel`` sending ``token`` as a bearer token on every call (unchanged when None)."""
    return grpc.intercept_channel(channel, _BearerToken(token)) if token else channel
