"""Listener TLS identities and SNI selection (spec: "Certificate choice on a handshake").

Exact SNI match in ``certificates``, else ``cert``/``key``, else the first ``certificates``
entry. The same store serves QUIC (aioquic TLS) and, later, the TCP bootstrap listener.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from spooky_trio.config import ListenerTls


class IdentityError(Exception):
    """A certificate or key could not be loaded; the message names the file."""


#: the private keys a TLS 1.3 handshake can sign with (aioquic's and ssl's)
SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | dsa.DSAPrivateKey


@attrs.frozen
class Identity:
    """One certificate chain and its private key, parsed."""

    server_name: str | None
    cert_file: str
    key_file: str
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    private_key: SigningKey


def load_identity(cert_file: str, key_file: str, server_name: str | None = None) -> Identity:
    """Parse a PEM chain and key. Raises :class:`IdentityError` with the file name."""
    try:
        cert_pem = Path(cert_file).read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read certificate {cert_file}: {exc.strerror or exc}") from exc
    try:
        key_pem = Path(key_file).read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read key {key_file}: {exc.strerror or exc}") from exc
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise IdentityError(f"certificate {cert_file} is not valid PEM: {exc}") from exc
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"key {key_file} is not a valid unencrypted PEM key: {exc}") from exc
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey, dsa.DSAPrivateKey)):
        raise IdentityError(f"key {key_file} is a {type(key).__name__}, which cannot sign a TLS handshake (RSA, EC, Ed25519 or Ed448)")
    return Identity(
        server_name=server_name,
        cert_file=cert_file,
        key_file=key_file,
        certificate=certs[0],
        chain=tuple(certs[1:]),
        private_key=key,
    )


class IdentityStore:
    """The TLS identities of one listener, with the schema's selection order."""

    def __init__(self, default: Identity | None, by_name: list[Identity]) -> None:
        if default is None and not by_name:
            raise IdentityError("listener has no TLS certificate (set tls.cert/tls.key or tls.certificates)")
        self.default = default
        self.named = list(by_name)
        self._exact = {i.server_name.lower(): i for i in by_name if i.server_name}

    @classmethod
    def from_config(cls, tls_config: ListenerTls) -> IdentityStore:
        """Load from a ``ListenerTls`` config. Raises :class:`IdentityError`."""
        default = None
        if tls_config.cert and tls_config.key:
            default = load_identity(tls_config.cert, tls_config.key)
        named = [load_identity(c.cert, c.key, c.server_name) for c in tls_config.certificates]
        return cls(default, named)

    def select(self, server_name: str | None) -> tuple[Identity, str]:
        """The identity for a ClientHello's SNI and how it was chosen (sni/default/fallback_first)."""
        if server_name:
            hit = self._exact.get(server_name.lower())
            if hit is not None:
                return hit, "sni"
        if self.default is not None:
            return self.default, "default"
        return self.named[0], "fallback_first"

    def all(self) -> list[Identity]:
        """Every identity: the default (``cert``/``key``) first, then ``certificates``."""
        return [*([self.default] if self.default is not None else []), *self.named]

    @property
    def primary(self) -> Identity:
        return self.select(None)[0]
