"""TLS for the TCP bootstrap listener: per-identity SSL contexts, SNI selection, client certs.

One :class:`ssl.SSLContext` is built per identity of the listener's :class:`IdentityStore`,
all configured alike (ALPN ``h2``/``http/1.1``, client-auth mode and trust roots), because
OpenSSL takes the ALPN callback and the verification store from whichever context the
``sni_callback`` switched to. Selection follows the schema's order through
:meth:`IdentityStore.select`, the same rule as QUIC's ``_SniContext``.
"""

from __future__ import annotations

import contextvars
import logging
import ssl
from collections import Counter

import trio
from cryptography import x509

from spooky_trio.config import ClientAuthConfig, certificate_covers
from spooky_trio.http.messages import Headers
from spooky_trio.ingress.identities import Identity, IdentityStore

log = logging.getLogger("spooky.ingress.tls")

ALPN_PROTOCOLS = ["h2", "http/1.1"]

#: The header that carries a verified client certificate's subject to backends.
CLIENT_CERT_HEADER = b"x-client-cert-subject"

#: the ClientHello's server name, set by the SNI callback. OpenSSL calls it synchronously
#: inside ``do_handshake``, i.e. in the connection's own task, whose context this variable
#: lives in: each connection task sees its own handshake's name (:func:`handshake_server_name`),
#: without reaching into trio's private SSL object
_HANDSHAKE_SERVER_NAME: contextvars.ContextVar[str | None] = contextvars.ContextVar("spooky_sni", default=None)


def handshake_server_name() -> str | None:
    """The SNI of the TLS handshake the calling task completed (None: the client sent none)."""
    return _HANDSHAKE_SERVER_NAME.get()

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) mapped to the reasons we log and count.
_VERIFY_REASONS: dict[int, str] = {
    2: "unknown_issuer",  # unable to get issuer certificate
    9: "not_yet_valid",
    10: "expired",
    18: "unknown_issuer",  # self-signed leaf
    19: "unknown_issuer",  # self-signed certificate in chain
    20: "unknown_issuer",  # unable to get local issuer certificate
    21: "unknown_issuer",  # unable to verify the first certificate
}


class TlsSetupError(Exception):
    """The listener's TLS configuration cannot be used; the message names the file or name."""


def classify_handshake_failure(exc: BaseException) -> str:
    """A short reason for a failed server handshake: for client certificates ``missing``,
    ``expired``, ``not_yet_valid``, ``unknown_issuer`` or ``invalid``; otherwise
    ``no_shared_protocol``, ``timeout`` or ``handshake_failed``.

    ``exc`` is what ``trio.SSLStream.do_handshake`` raised (the ``ssl`` error is its cause).
    """
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(cause.verify_code, "invalid")
    if isinstance(cause, ssl.SSLError):
        reason = (cause.reason or "").upper()
        if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
            return "missing"
        if "CERTIFICATE" in reason:
            return "invalid"
        if "NO_APPLICATION_PROTOCOL" in reason or "NO_SHARED_CIPHER" in reason or "VERSION" in reason:
            return "no_shared_protocol"
    return "handshake_failed"


def escape_subject(subject: str) -> bytes:
    """An RFC 4514 string made safe for a header value: non-printable and non-ASCII
    characters become ``\\XX`` escapes of their UTF-8 bytes (RFC 4514 section 2.4)."""
    out = bytearray()
    for char in subject:
        if " " <= char <= "~":
            out += char.encode("ascii")
        else:
            out += b"".join(b"\\%02X" % byte for byte in char.encode("utf-8"))
    return bytes(out)


def peer_subject(ssl_object: trio.SSLStream[trio.SocketStream] | None) -> bytes | None:
    """The verified client certificate's subject (escaped RFC 4514), or None without one.

    Only meaningful on a listener that verifies client certificates: with verification on,
    a handshake with an unverifiable certificate never completes, so any certificate the
    peer presented here was verified against ``client_auth.ca_file``.
    """
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    return escape_subject(x509.load_der_x509_certificate(der).subject.rfc4514_string())


def client_headers(headers: Headers, subject: bytes | None) -> Headers:
    """Request headers with every client-sent ``X-Client-Cert-Subject`` removed and the
    verified ``subject`` (if any) added: backends can trust the header's presence."""
    cleaned = [(n, v) for n, v in headers if n != CLIENT_CERT_HEADER]
    if subject is not None:
        cleaned.append((CLIENT_CERT_HEADER, subject))
    return cleaned


class BootstrapTls:
    """Server-side SSL contexts of one bootstrap listener.

    ``context`` is what connections wrap their socket with; its ``sni_callback`` switches the
    connection to the selected identity's context. ``stats`` counts SNI selection outcomes
    (``sni.<how>``), negotiated ALPN (``alpn.<proto>``) and handshake failures
    (``handshake_failed.<reason>``). Raises :class:`TlsSetupError` when a ``server_name`` is
    not covered by its certificate's SANs or a file cannot be loaded.
    """

    def __init__(self, identities: IdentityStore, client_auth: ClientAuthConfig, stats: Counter[str] | None = None) -> None:
        self.identities = identities
        self.client_auth = client_auth
        #: shared with the replacement on a certificate reload, so counts continue
        self.stats: Counter[str] = Counter() if stats is None else stats
        for identity in identities.named:
            assert identity.server_name is not None
            if not certificate_covers(identity.certificate, identity.server_name):
                raise TlsSetupError(
                    f"tls.certificates: {identity.server_name!r} is not covered by the subjectAltName of {identity.cert_file}"
                )
        if client_auth.enabled and not client_auth.ca_file:
            raise TlsSetupError("tls.client_auth.enabled needs tls.client_auth.ca_file")
        self._contexts: dict[int, ssl.SSLContext] = {}
        for identity in [*([identities.default] if identities.default else []), *identities.named]:
            self._contexts[id(identity)] = self._build(identity)
        self.context = self._contexts[id(identities.primary)]
        for ctx in self._contexts.values():
            ctx.sni_callback = self._on_server_name

    @property
    def verifies_clients(self) -> bool:
        return bool(self.client_auth.enabled)

    def _build(self, identity: Identity) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        ctx.set_alpn_protocols(ALPN_PROTOCOLS)
        try:
            ctx.load_cert_chain(identity.cert_file, identity.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"cannot load {identity.cert_file} / {identity.key_file}: {exc}") from exc
        if self.client_auth.enabled:
            ctx.verify_mode = ssl.CERT_REQUIRED if self.client_auth.require_client_cert else ssl.CERT_OPTIONAL
            try:
                ctx.load_verify_locations(cafile=self.client_auth.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise TlsSetupError(f"tls.client_auth.ca_file {self.client_auth.ca_file}: {exc}") from exc
        return ctx

    def _on_server_name(self, ssl_object: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        _HANDSHAKE_SERVER_NAME.set(server_name)
        identity, how = self.identities.select(server_name)
        self.stats[f"sni.{how}"] += 1
        target = self._contexts[id(identity)]
        if ssl_object.context is not target:
            ssl_object.context = target

    def record_alpn(self, protocol: str | None) -> None:
        self.stats[f"alpn.{protocol or 'none'}"] += 1

    def record_failure(self, reason: str, peer: tuple[str, int]) -> None:
        """Count and log a failed handshake; client-certificate reasons log at info level."""
        self.stats[f"handshake_failed.{reason}"] += 1
        if reason in ("missing", "expired", "not_yet_valid", "unknown_issuer", "invalid"):
            log.info("client certificate rejected from %s: %s", peer, reason)
        else:
            log.debug("TLS handshake from %s failed: %s", peer, reason)
