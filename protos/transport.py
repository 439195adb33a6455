"""gRPC settings both sides must agree on: message-size limits, keepalive, TLS and the bearer token.

The security options are one small set of dataclasses that `LearnerConfig` (``ServerSecurity``),
`ActorConfig` and `StatusConfig` (``ClientSecurity``) inherit, so the flags read the same everywhere:
``--tls-cert``, ``--tls-key``, ``--tls-ca``, ``--token-file``, ``--token-env`` (and, on clients,
``--tls-server-name``). The token never comes from a command-line literal: only from a file or an
environment variable, and it travels as ``authorization: Bearer <token>`` metadata on every call.
"""

from __future__ import annotations

import collections
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from hilrl.buffers.options import opt

DEFAULT_TOKEN_ENV = "HILRL_TOKEN"
AUTH_HEADER = "authorization"
BEARER = "Bearer "
_GROUP = "security (TLS and bearer token)"


class SecurityConfigError(ValueError):
    """A TLS or token option cannot be used (missing/unreadable file, incomplete pair, bad token)."""


DEFAULT_KEEPALIVE_S = 20.0
MIN_KEEPALIVE_S = 2.0
# The learner accepts keepalive pings this often (gRPC's default is one per 5 minutes without data: a
# client pinging every --keepalive-s on a quiet stream got GOAWAY "too_many_pings" and was cut off).
SERVER_MIN_PING_INTERVAL_MS = 1_000


def channel_options(max_message_mb: int, keepalive_s: float = DEFAULT_KEEPALIVE_S,
                    server: bool = False) -> list[tuple[str, int]]:
    """Explicit message-size limits (never the silent 4 MB default) and matching keepalive.

    Each side pings its peer every ``keepalive_s`` and drops the connection when a ping is not answered
    within half that time, so a half-open link (a partition, a frozen or vanished peer) is noticed
    within about 1.5 x ``keepalive_s`` even while a stream waits for data. ``server``: also accept
    clients' pings as often as once a second (any client ``keepalive_s`` >= ``MIN_KEEPALIVE_S``).
    """
    check_keepalive(keepalive_s)
    limit = max_message_mb * 1024 * 1024
    ping_ms = int(keepalive_s * 1000)
    options = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", ping_ms),
        ("grpc.keepalive_timeout_ms", max(1000, ping_ms // 2)),
        # the server side waits for a ping ack this long, not keepalive_timeout (default: one minute)
        ("grpc.http2.ping_timeout_ms", max(1000, ping_ms // 2)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ping_ms),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if server:
        options.append(("grpc.http2.min_recv_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS))
    return options


def check_keepalive(keepalive_s: float) -> None:
    if not keepalive_s >= MIN_KEEPALIVE_S:
        raise SecurityConfigError(f"--keepalive-s {keepalive_s}: must be at least {MIN_KEEPALIVE_S:g} seconds")


def read_file(flag: str, path: Path, pem: bool = False) -> bytes:
    """The bytes of ``path``; a ``SecurityConfigError`` naming ``flag`` and ``path`` if it cannot be used."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    if pem and b"-----BEGIN " not in data:
        raise SecurityConfigError(f"{flag} {path}: not a PEM file (no '-----BEGIN' line); "
                                  "see deploy/make-certs.sh")
    return data


def _check_token(token: str, where: str) -> str:
    token = token.strip()
    if not token:
        raise SecurityConfigError(f"{where}: the token is empty")
    if not all(33 <= ord(c) <= 126 for c in token):
        raise SecurityConfigError(f"{where}: the token must be printable ASCII without spaces")
    return token


@dataclass
class TokenOptions:
    """Where the bearer token comes from (never a command-line literal), and the keepalive interval.
    Shared by every side."""

    keepalive_s: float = opt(DEFAULT_KEEPALIVE_S, "ping the other side every N seconds; a link whose ping is not "
                                                  "answered within N/2 seconds counts as broken and is dropped "
                                                  f"(half-open links, partitions; min {MIN_KEEPALIVE_S:g})",
                             group="connection")

    token_file: Path | None = opt(None, "read the bearer token from this file (first line; keep it mode 600)",
                                  group=_GROUP)
    token_env: str = opt(DEFAULT_TOKEN_ENV, "read the bearer token from this environment variable when it is "
                                            "set (--token-file wins if both are given)", group=_GROUP)

    def token(self) -> str | None:
        """The bearer token, or None when neither the file nor the variable provides one."""
        if self.token_file is not None:
            text = read_file("--token-file", self.token_file).decode("utf-8", "replace")
            return _check_token(text.splitlines()[0] if text.strip() else "", f"--token-file {self.token_file}")
        value = os.environ.get(self.token_env, "") if self.token_env else ""
        if value:
            return _check_token(value, f"--token-env {self.token_env}")
        if self.token_env and self.token_env != DEFAULT_TOKEN_ENV:
            raise SecurityConfigError(f"--token-env {self.token_env}: the environment variable is not set")
        return None


@dataclass
class ServerSecurity(TokenOptions):
    """The learner's TLS options: its certificate and, for mutual TLS, the CA its clients must use."""

    tls_cert: Path | None = opt(None, "serve TLS with this certificate chain (PEM; with --tls-key)", group=_GROUP)
    tls_key: Path | None = opt(None, "private key of --tls-cert (PEM)", group=_GROUP)
    tls_ca: Path | None = opt(None, "mutual TLS: require a client certificate signed by this CA (PEM)", group=_GROUP)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials (mutual when --tls-ca is given), or None for plaintext."""
        check_keepalive(self.keepalive_s)
        if self.tls_cert is None and self.tls_key is None:
            if self.tls_ca is not None:
                raise SecurityConfigError("--tls-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
            return None
        if self.tls_cert is None or self.tls_key is None:
            raise SecurityConfigError("--tls-cert and --tls-key go together (the certificate and its private key)")
        cert = read_file("--tls-cert", self.tls_cert, pem=True)
        key = read_file("--tls-key", self.tls_key, pem=True)
        ca = read_file("--tls-ca", self.tls_ca, pem=True) if self.tls_ca is not None else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


@dataclass
class ClientSecurity(TokenOptions):
    """How actors and `hilrl status` verify the learner and prove who they are."""

    tls_ca: Path | None = opt(None, "use TLS and verify the learner's certificate with this CA (PEM)", group=_GROUP)
    tls_cert: Path | None = opt(None, "client certificate for a learner with mutual TLS (PEM; with --tls-key)",
                                group=_GROUP)
    tls_key: Path | None = opt(None, "private key of the client --tls-cert (PEM)", group=_GROUP)
    tls_server_name: str | None = opt(None, "check this name in the learner's certificate instead of the host "
                                            "in the address (e.g. when connecting by IP)", group=_GROUP)
    insecure: bool = opt(False, "send the bearer token to a learner that is not on loopback over plaintext "
                                "(anyone on the network can read it; use TLS: --tls-ca)", group=_GROUP)

    @property
    def uses_tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    def check_target(self, target: str, token: str | None) -> None:
        """Refuse to send a bearer token over plaintext to anything but loopback (unless --insecure)."""
        if token is None or self.uses_tls or self.insecure or is_loopback(target_host(target)):
            return
        raise SecurityConfigError(f"refusing to send the bearer token in plaintext to {target}: only loopback may "
                                  "go without TLS. Use TLS (--tls-ca with the CA of the learner's certificate, see "
                                  "deploy/make-certs.sh), or pass --insecure if this network is trusted")

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for plaintext (no --tls-ca and no --tls-cert)."""
        check_keepalive(self.keepalive_s)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SecurityConfigError("--tls-cert and --tls-key go together (the certificate and its private key)")
        if self.tls_server_name is not None and not self.uses_tls:
            raise SecurityConfigError("--tls-server-name needs TLS: give --tls-ca too")
        if not self.uses_tls:
            return None
        ca = read_file("--tls-ca", self.tls_ca, pem=True) if self.tls_ca is not None else None
        cert = read_file("--tls-cert", self.tls_cert, pem=True) if self.tls_cert is not None else None
        key = read_file("--tls-key", self.tls_key, pem=True) if self.tls_key is not None else None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class BearerTokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                             grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call (works on plaintext loopback channels too,
    unlike gRPC call credentials, which need a secure channel)."""

    def __init__(self, token: str) -> None:
        self._header = (AUTH_HEADER, BEARER + token)

    def _details(self, d: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(d.metadata or ()), self._header]
        return _CallDetails(d.method, d.timeout, metadata, d.credentials, getattr(d, "wait_for_ready", None),
                            getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


def client_channel(target: str, max_message_mb: int, security: ClientSecurity | None = None) -> grpc.Channel:
    """A channel to the learner: TLS when configured, explicit size limits, the bearer token on every call.

    Raises ``SecurityConfigError`` for unusable TLS/token options (before any connection is made).
    """
    security = security if security is not None else ClientSecurity()
    options: list[tuple[str, Any]] = list(channel_options(max_message_mb, security.keepalive_s))
    # gRPC's own reconnect backoff (1 s x 1.6 up to 2 min) makes calls fail fast with the cached error long
    # after a restarted learner is back; with a connection attempt every second at most, the actor's own
    # retry loop (actor/link.py) finds a restarted learner on its next try
    options += [("grpc.initial_reconnect_backoff_ms", 500), ("grpc.max_reconnect_backoff_ms", 1000)]
    credentials = security.channel_credentials()
    token = security.token()
    security.check_target(target, token)
    if credentials is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        if security.tls_server_name:
            options.append(("grpc.ssl_target_name_override", security.tls_server_name))
        channel = grpc.secure_channel(target, credentials, options=options)
    return grpc.intercept_channel(channel, BearerTokenInterceptor(token)) if token else channel


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def target_host(target: str) -> str:
    """The host of a gRPC target: HOST:PORT, [IPV6]:PORT, dns:///HOST:PORT, ipv4:ADDR:PORT; unix sockets are
    local ("localhost")."""
    if target.startswith(("unix:", "unix-abstract:")):
        return "localhost"
    if "://" in target:
        target = target.split("://", 1)[1].lstrip("/")
    elif target.startswith(("dns:", "ipv4:", "ipv6:")):
        target = target.split(":", 1)[1]
    if target.startswith("["):
        return target[1:target.find("]")]
    return target.rsplit(":", 1)[0] if target.count(":") == 1 else target


_HANDSHAKE_MARKERS = ("ssl handshake failed", "is not in peer certificate", "certificate_verify_failed",
                      "handshake failed")


def is_tls_handshake_failure(details: str) -> bool:
    """Whether an UNAVAILABLE status says the client's own TLS checks failed (wrong CA, wrong name,
    a plaintext server): a configuration error that retrying does not fix."""
    low = details.lower()
    return any(m in low for m in _HANDSHAKE_MARKERS)


def connection_hint(code: grpc.StatusCode, details: str, uses_tls: bool) -> str:
    """A sentence naming the likely cause of a failed call, or "" when the status says it already."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return ""
    low = details.lower()
    if "wrong_version_number" in low:
        return ("; the learner does not seem to serve TLS: drop --tls-ca/--tls-cert here, or start the learner "
                "with --tls-cert/--tls-key")
    if is_tls_handshake_failure(details):
        return ("; TLS handshake failed: --tls-ca must be the CA that signed the learner's certificate and the "
                "host in the address (or --tls-server-name) one of the certificate's names")
    if "socket closed" in low or "connection reset" in low:
        if uses_tls:
            return ("; the learner closed the connection during setup: if it requires mutual TLS (learner "
                    "--tls-ca), give --tls-cert and --tls-key")
        return ("; the learner closed the connection during setup: if it serves TLS, give --tls-ca "
                "(and --tls-cert/--tls-key for mutual TLS)")
    return ""
