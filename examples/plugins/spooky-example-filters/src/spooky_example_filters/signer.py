"""``hmac-signer``: signs each request for the backend, which can then refuse anything that
did not come through the proxy (and notice a changed body).

The signature goes in ``header`` (default ``x-signature``; a client's copy is removed)::

    t=<unix seconds>,kid=<key_id>,sig=<hex HMAC-SHA256>

over ``"<t>\\n<METHOD>\\n<authority>\\n<path?query>\\n<hex SHA-256 of the body>"``. The key
comes from ``key_file`` (its first line; preferred: it keeps the secret out of the config)
or ``key``. The body is read whole to be hashed, at most ``max_body_bytes`` (default
65536; a larger one is answered 413): the filter declares it as ``request_body_limit``.
The HMAC is Python's ``hmac`` module; nothing here is home-made cryptography.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from spooky_trio.plugin import PluginConfigError, Request, Response
from spooky_example_filters import _settings


class HmacSigner:
    def __init__(self, config: dict[str, object]) -> None:
        _settings.only(config, {"key", "key_file", "key_id", "header", "max_body_bytes"})
        key, key_file = _settings.text(config, "key"), _settings.text(config, "key_file")
        if (key is None) == (key_file is None):
            raise PluginConfigError("give exactly one of key and key_file", "key_file")
        if key_file is not None:
            try:
                with open(key_file, encoding="utf-8") as handle:
                    key = handle.readline().strip()
            except OSError as exc:
                raise PluginConfigError(f"cannot read it: {exc.strerror or exc}", "key_file") from None
            if not key:
                raise PluginConfigError("holds no key on its first line", "key_file")
        assert key is not None
        self._key = key.encode("utf-8")
        self.key_id = _settings.text(config, "key_id", "spooky")
        header = _settings.text(config, "header", "x-signature")
        assert header is not None
        self.header = header
        #: the proxy reads the body (at most this many bytes) before on_request
        self.request_body_limit = _settings.number(config, "max_body_bytes", 65536, 0, 64 * 1024 * 1024)

    async def on_request(self, request: Request) -> Response | None:
        body = request.body if request.body is not None else b""
        stamp = str(int(time.time()))
        signed = "\n".join((stamp, request.method, request.authority, request.target, hashlib.sha256(body).hexdigest()))
        mac = hmac.new(self._key, signed.encode("latin-1"), hashlib.sha256).hexdigest()
        request.headers.set(self.header, f"t={stamp},kid={self.key_id},sig={mac}")
        return None

    def __repr__(self) -> str:
        return f"HmacSigner(key_id={self.key_id!r})"  # never the key
