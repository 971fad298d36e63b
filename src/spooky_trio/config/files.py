"""File checks for a loaded config: certificates, keys and CA bundles exist and parse.

Relative paths are resolved against the current working directory (see
:mod:`spooky_trio.config.load`). Nothing here raises for a bad file: every problem becomes
a :class:`ConfigIssue` naming the key path (with the line/column where the path was written
when the config came from the loader).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from spooky_trio.config.issues import ConfigIssue, KeyPath, PositionMap
from spooky_trio.config.plugins import check_plugins
from spooky_trio.config.schema import Config, ListenerTls, UpstreamTlsConfig
from spooky_trio.config.schema_auth import AuthConfig
from spooky_trio.config.validate_discovery import check_discovery_files
from spooky_trio.config.validate_quic_lb import check_quic_lb_files
from spooky_trio.config.validate_ratelimit import check_store_files


class _FileError(Exception):
    """A file problem; the message is ready for a ConfigIssue."""


def check_files(config: Config) -> list[ConfigIssue]:
    """Problems with the files ``config`` references (empty list when all are usable).

    Checked: each effective listener's ``tls.cert``/``tls.key`` (PEM parses, key matches the
    leaf certificate), ``tls.certificates[]`` (same, plus ``server_name`` covered by the
    certificate's SANs), ``tls.client_auth.ca_file``, the ``ca_file``/``ca_dir`` of every
    upstream TLS policy a backend uses (:meth:`Config.tls_policies_in_use`: as Spooky, a
    policy of pools without TLS backends is not read), the files of every pool's ``auth`` block
    (``ca_file``s, ``client_secret_file``), and ``resilience.rate_limit_store.password_file``
    and ``ca_file``, each listener's ``quic_lb.key_file``, and the TLS and password files of
    etcd discovery sources. Also every ``plugins`` entry: its code is found and its factory accepts
    its ``config`` (:func:`~spooky_trio.config.plugins.check_plugins`).
    """
    positions = PositionMap(config.source_positions)
    issues: list[ConfigIssue] = []
    base: KeyPath = ("listeners",) if config.listeners else ("listen",)
    for index, listener in enumerate(config.effective_listeners()):
        path = base + (index,) if config.listeners else base
        issues.extend(_check_listener_tls(positions, path + ("tls",), listener.tls))
    for tls_path, tls in config.tls_policies_in_use():
        issues.extend(_check_upstream_tls(positions, tls_path, tls))
    for name, pool in config.upstream.items():
        if pool.auth is not None:
            issues.extend(_check_auth_files(positions, ("upstream", name, "auth"), pool.auth))
    issues.extend(check_store_files(config))
    issues.extend(check_discovery_files(config))
    issues.extend(check_plugins(config))
    issues.extend(check_quic_lb_files(config))
    return issues


def certificate_covers(cert: x509.Certificate, server_name: str) -> bool:
    """True when ``server_name`` matches a DNS SAN (``*.`` covers exactly one label) or an IP SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    name = server_name.lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    for dns in san.get_values_for_type(x509.DNSName):
        pattern = dns.lower().rstrip(".")
        if pattern == name:
            return True
        if pattern.startswith("*."):
            suffix = pattern[1:]
            head = name[: -len(suffix)] if name.endswith(suffix) else ""
            if head and "." not in head:
                return True
    return False


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        hint = "" if os.path.isabs(path) else f" (relative paths are resolved from {os.getcwd()})"
        raise _FileError(f"file not found: {path}{hint}") from None
    except IsADirectoryError:
        raise _FileError(f"{path} is a directory, expected a file") from None
    except OSError as exc:
        raise _FileError(f"cannot read {path}: {exc.strerror or exc}") from None


def _load_certificates(path: str) -> list[x509.Certificate]:
    data = _read(path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise _FileError(f"{path} does not contain a PEM certificate") from None
    return certs


def _load_key(path: str) -> PrivateKeyTypes:
    data = _read(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _FileError(f"{path} is an encrypted private key; a key without passphrase is required") from None
    except (ValueError, NotImplementedError):
        raise _FileError(f"{path} does not contain a PEM private key") from None


class _PublicKey(Protocol):
    def public_bytes(self, encoding: serialization.Encoding, format: serialization.PublicFormat) -> bytes: ...


def _spki(key: _PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_pair(
    positions: PositionMap, path: KeyPath, cert_path: str, key_path: str
) -> tuple[list[ConfigIssue], x509.Certificate | None]:
    """Check a cert/key pair; returns issues and the leaf certificate when it parsed."""
    issues: list[ConfigIssue] = []
    leaf: x509.Certificate | None = None
    key: PrivateKeyTypes | None = None
    try:
        leaf = _load_certificates(cert_path)[0]
    except _FileError as exc:
        issues.append(positions.issue(path + ("cert",), str(exc)))
    try:
        key = _load_key(key_path)
    except _FileError as exc:
        issues.append(positions.issue(path + ("key",), str(exc)))
    if leaf is not None and key is not None and _spki(leaf.public_key()) != _spki(key.public_key()):
        issues.append(positions.issue(path + ("key",), f"private key {key_path} does not match certificate {cert_path}"))
    return issues, leaf


def _check_ca_file(positions: PositionMap, path: KeyPath, ca_file: str) -> list[ConfigIssue]:
    try:
        _load_certificates(ca_file)
    except _FileError as exc:
        return [positions.issue(path, str(exc))]
    return []


def _check_ca_dir(positions: PositionMap, path: KeyPath, ca_dir: str) -> list[ConfigIssue]:
    if not os.path.exists(ca_dir):
        return [positions.issue(path, f"directory not found: {ca_dir}")]
    if not os.path.isdir(ca_dir):
        return [positions.issue(path, f"{ca_dir} is not a directory")]
    try:
        names = sorted(os.listdir(ca_dir))
    except OSError as exc:
        return [positions.issue(path, f"cannot read directory {ca_dir}: {exc.strerror or exc}")]
    for name in names:
        full = os.path.join(ca_dir, name)
        if not os.path.isfile(full):
            continue
        try:
            _load_certificates(full)
        except _FileError:
            continue
        return []
    return [positions.issue(path, f"{ca_dir} contains no readable PEM certificates")]


def _check_listener_tls(positions: PositionMap, path: KeyPath, tls: ListenerTls) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    if tls.cert is not None and tls.key is not None:
        issues.extend(_check_pair(positions, path, tls.cert, tls.key)[0])
    for index, entry in enumerate(tls.certificates):
        entry_path = path + ("certificates", index)
        pair_issues, leaf = _check_pair(positions, entry_path, entry.cert, entry.key)
        issues.extend(pair_issues)
        if leaf is not None and not certificate_covers(leaf, entry.server_name):
            issues.append(
                positions.issue(
                    entry_path + ("server_name",),
                    f"{entry.server_name!r} is not covered by the subjectAltName of {entry.cert}",
                )
            )
    if tls.client_auth.ca_file is not None:
        issues.extend(_check_ca_file(positions, path + ("client_auth", "ca_file"), tls.client_auth.ca_file))
    return issues


def _check_upstream_tls(positions: PositionMap, path: KeyPath, tls: UpstreamTlsConfig) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    if tls.ca_file is not None:
        issues.extend(_check_ca_file(positions, path + ("ca_file",), tls.ca_file))
    if tls.ca_dir is not None:
        issues.extend(_check_ca_dir(positions, path + ("ca_dir",), tls.ca_dir))
    return issues


def read_secret_file(path: str) -> str:
    """The trimmed content of a file that holds one secret (``client_secret_file``); raises
    ``ValueError`` saying why it cannot be used (the message never contains the secret)."""
    try:
        text = _read(path).decode("utf-8").strip()
    except _FileError as exc:
        raise ValueError(str(exc)) from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{path} is empty")
    return text


def _check_auth_files(positions: PositionMap, path: KeyPath, auth: AuthConfig) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    if auth.jwt is not None and auth.jwt.ca_file is not None:
        issues.extend(_check_ca_file(positions, path + ("jwt", "ca_file"), auth.jwt.ca_file))
    ext = auth.external_auth
    if ext is not None:
        if ext.ca_file is not None:
            issues.extend(_check_ca_file(positions, path + ("external_auth", "ca_file"), ext.ca_file))
        if ext.client_secret_file is not None:
            try:
                read_secret_file(ext.client_secret_file)
            except ValueError as exc:
                issues.append(positions.issue(path + ("external_auth", "client_secret_file"), str(exc)))
    return issues
