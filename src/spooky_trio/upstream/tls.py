"""Client TLS for backends: context construction, connecting, and identity verification.

Identity rule: whenever a context verifies certificates, the peer certificate must be valid
for ``BackendTarget.host`` (a DNS name, wildcard allowed in the leftmost label, or an IP
address), whether or not SNI is sent. When ``server_name`` equals ``host`` the ssl module
checks it during the handshake; otherwise (no SNI, or an SNI different from the host) the
handshake runs without ssl's hostname check and :func:`verify_identity` checks the
certificate against ``host`` right after it.
"""

from __future__ import annotations

import collections
import ipaddress
import os
import re
import ssl
import weakref
from collections.abc import Sequence

import trio
from cryptography import x509

from spooky_trio.upstream.common import BackendTarget
from spooky_trio.upstream.errors import UpstreamConnectError, UpstreamTLSError

#: contexts built by make_client_ssl_context -> an equivalent one with check_hostname off
_UNCHECKED_TWINS: weakref.WeakKeyDictionary[ssl.SSLContext, ssl.SSLContext] = weakref.WeakKeyDictionary()
#: contexts built here -> the PEM texts they trust beside the system roots (for QUIC)
_MATERIALS: weakref.WeakKeyDictionary[ssl.SSLContext, tuple[str, ...]] = weakref.WeakKeyDictionary()


def make_client_ssl_context(
    *,
    verify: bool = True,
    ca_file: str | None = None,
    ca_dir: str | None = None,
    alpn: Sequence[str] = ("h2",),
) -> ssl.SSLContext:
    """A new client context for backends, built from the files as they are now.

    ``verify=True``: CERT_REQUIRED with hostname checking, trusting the system default CAs
    plus ``ca_file``/``ca_dir``. ``verify=False``: CERT_NONE (no verification at all).
    ``alpn`` lists the protocols offered (default: h2 only). Callers must not mutate it.
    Generations get theirs from :class:`ClientContexts`, which reuses a context while the
    trust material's content is unchanged.
    """
    return _build_context(verify, _trust_material(verify, ca_file, ca_dir), tuple(alpn))


#: the PEM texts a context trusts beside the system roots, in load order
_Material = tuple[str, ...]


class ClientContexts:
    """Client contexts keyed by what they trust (the *content* of ``ca_file`` and of the
    bundles in ``ca_dir``), never by path.

    Each generation build asks for its pools' contexts (:meth:`get` re-reads the files), so
    a CA file rewritten in place is trusted from the next reload on, while a reload that
    leaves the material unchanged gets the same context object back: backend targets (and
    with them pooled connections) stay equal across it. Bounded: the least recently used
    context is forgotten first (its generation keeps its own reference).
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._contexts: collections.OrderedDict[tuple[bool, _Material, tuple[str, ...]], ssl.SSLContext] = collections.OrderedDict()

    def get(self, *, verify: bool = True, ca_file: str | None = None, ca_dir: str | None = None, alpn: Sequence[str] = ("h2",)) -> ssl.SSLContext:
        """The context for this policy and the files' current content (OSError: unreadable)."""
        material = _trust_material(verify, ca_file, ca_dir)
        key = (verify, material, tuple(alpn))
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = _build_context(verify, material, tuple(alpn))
            while len(self._contexts) > self.capacity:
                self._contexts.popitem(last=False)
        else:
            self._contexts.move_to_end(key)
        return context


def _build_context(verify: bool, material: _Material, alpn: tuple[str, ...]) -> ssl.SSLContext:
    context = _new_context(verify, material, alpn, check_hostname=verify)
    if verify:
        _UNCHECKED_TWINS[context] = _new_context(verify, material, alpn, check_hostname=False)
    _MATERIALS[context] = material
    return context


def quic_trust(context: ssl.SSLContext) -> tuple[bool, bytes | None]:
    """What a QUIC handshake to a backend trusts, from the TCP context of the same policy:
    ``(verify, cadata)``. ``cadata`` is the PEM text of ``ca_file``/``ca_dir`` as read for
    ``context`` (None when there is none); the system roots are added by the caller.

    aioquic verifies with its own store, not with an :class:`ssl.SSLContext`, so the QUIC
    side gets the very bytes the TCP side was built from (for a context built elsewhere:
    the CA certificates loaded into it)."""
    verify = context.verify_mode != ssl.CERT_NONE
    if not verify:
        return False, None
    material = _MATERIALS.get(context)
    if material is None:
        material = tuple(ssl.DER_cert_to_PEM_cert(der) for der in context.get_ca_certs(binary_form=True))
    return True, "\n".join(material).encode("ascii") if material else None


def _new_context(verify: bool, material: _Material, alpn: tuple[str, ...], *, check_hostname: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if verify:
        for pem in material:
            context.load_verify_locations(cadata=pem)
        context.check_hostname = check_hostname
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def _trust_material(verify: bool, ca_file: str | None, ca_dir: str | None) -> _Material:
    """The PEM texts of ``ca_file`` and of every bundle in ``ca_dir``, read now (the context
    is built from these very bytes, so what was read is what is trusted)."""
    if not verify:
        return ()
    texts = []
    if ca_file is not None:
        with open(ca_file, "rb") as fh:
            texts.append(_certificates(fh.read()))
    texts.extend(_pem_bundles(ca_dir))
    return tuple(text for text in texts if text)


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _certificates(data: bytes) -> str:
    """The PEM certificate blocks of ``data`` (comments and other text around them dropped)."""
    return "\n".join(block.decode("ascii", "replace") for block in _PEM_CERTIFICATE.findall(data))


def _pem_bundles(ca_dir: str | None) -> list[str]:
    """The text of every PEM bundle in ``ca_dir`` (the schema's "directory of PEM bundles").

    OpenSSL's own ``capath`` only finds files named by subject hash (c_rehash), which
    operators rarely prepare; loading each bundle matches what ``check_files`` accepts.
    """
    if ca_dir is None:
        return []
    bundles = []
    for entry in sorted(os.scandir(ca_dir), key=lambda e: e.name):
        if entry.is_file():
            with open(entry.path, "rb") as fh:
                data = fh.read()
            if b"-----BEGIN CERTIFICATE-----" in data:
                bundles.append(_certificates(data))
    return bundles


def _ssl_stream(tcp: trio.SocketStream, context: ssl.SSLContext, sni: str | None, *, builtin_check: bool) -> trio.SSLStream[trio.SocketStream]:
    """Wrap ``tcp``; with ``builtin_check`` False the ssl module does no hostname check."""
    if builtin_check or not context.check_hostname:
        return trio.SSLStream(tcp, context, server_hostname=sni, https_compatible=True)
    twin = _UNCHECKED_TWINS.get(context)
    if twin is not None:
        return trio.SSLStream(tcp, twin, server_hostname=sni, https_compatible=True)
    # A context we did not build: the SSL object snapshots the hostname check when it is
    # created, so switching it off only for this synchronous construction affects nothing else.
    context.check_hostname = False
    try:
        return trio.SSLStream(tcp, context, server_hostname=sni, https_compatible=True)
    finally:
        context.check_hostname = True


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _dns_matches(pattern: str, host: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    if pattern == host:
        return True
    if not pattern.startswith("*."):
        return False
    # "*" stands for exactly one whole leftmost label (no partial wildcards, as in ssl)
    head, dot, rest = host.partition(".")
    return bool(head) and bool(dot) and rest == pattern[2:] and "*" not in rest


def verify_identity(der: bytes, host: str) -> None:
    """Raise :class:`UpstreamTLSError` unless the DER certificate is valid for ``host``.

    DNS hosts match DNS SANs (a ``*.`` wildcard covers one leftmost label); IP literals
    match IP SANs. The subject CN is never consulted (as in the ssl module).
    """
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    if _is_ip(host):
        address = ipaddress.ip_address(host)
        if any(address == ip for ip in san.get_values_for_type(x509.IPAddress)):
            return
        raise UpstreamTLSError(f"certificate verify failed: IP address mismatch, certificate is not valid for '{host}'.")
    try:
        wanted = host.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        wanted = host.rstrip(".").lower()
    if any(_dns_matches(name, wanted) for name in san.get_values_for_type(x509.DNSName)):
        return
    raise UpstreamTLSError(f"certificate verify failed: Hostname mismatch, certificate is not valid for '{host}'.")


def _handshake_failure(target: BackendTarget, exc: BaseException) -> UpstreamTLSError:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = f"certificate verify failed: {cause.verify_message}"
    elif isinstance(cause, ssl.SSLError):
        detail = f"{cause.reason or 'ssl error'}: {cause}"
    else:
        detail = f"connection lost during the handshake ({cause!r})"
    return UpstreamTLSError(f"TLS handshake with {target} failed: {detail}")


async def _tls_handshake(tcp: trio.SocketStream, target: BackendTarget, *, require_alpn: str | None) -> trio.SSLStream[trio.SocketStream]:
    context = target.ssl_context
    assert context is not None  # BackendTarget enforces it for https
    verifying = context.verify_mode != ssl.CERT_NONE
    host_is_sni = target.server_name is not None and target.server_name.rstrip(".").lower() == target.host.rstrip(".").lower()
    builtin_check = host_is_sni and context.check_hostname
    stream = _ssl_stream(tcp, context, target.server_name, builtin_check=builtin_check)
    try:
        await stream.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        raise _handshake_failure(target, exc) from exc
    if verifying and not builtin_check:
        der = stream.getpeercert(binary_form=True)
        if not der:
            raise UpstreamTLSError(f"TLS handshake with {target} failed: the backend sent no certificate")
        try:
            verify_identity(der, target.host)
        except UpstreamTLSError as exc:
            raise UpstreamTLSError(f"TLS handshake with {target} failed: {exc}") from None
    if require_alpn is not None and stream.selected_alpn_protocol() != require_alpn:
        got = stream.selected_alpn_protocol()
        raise UpstreamTLSError(f"TLS handshake with {target} failed: ALPN negotiated {got!r}, {require_alpn!r} is required")
    return stream


async def open_backend_stream(target: BackendTarget, *, timeout: float, require_alpn: str | None = "h2") -> trio.abc.Stream:
    """Connect to ``target`` (TCP, plus TLS for https) within ``timeout`` seconds in total.

    Returns a :class:`trio.SocketStream` for http and a handshaken :class:`trio.SSLStream`
    for https whose ALPN protocol is ``require_alpn`` (when not None). Raises
    :class:`UpstreamConnectError` (refused, unreachable, DNS failure, timeout) or
    :class:`UpstreamTLSError` (handshake, verification, ALPN); nothing is left open then.
    """
    with trio.move_on_after(timeout):
        try:
            tcp = await trio.open_tcp_stream(target.connect_host or target.host, target.port)
        except OSError as exc:
            raise UpstreamConnectError(f"connect to {target} failed: {exc}") from exc
        if target.scheme == "http":
            return tcp
        try:
            return await _tls_handshake(tcp, target, require_alpn=require_alpn)
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
    raise UpstreamConnectError(f"connect to {target} timed out after {timeout:g}s")
