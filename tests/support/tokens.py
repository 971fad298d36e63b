"""Keys and tokens minted in the tests (PyJWT over cryptography): HS256 with a secret, and
RSA / EC / Ed25519 key pairs published as a JWK Set."""

from __future__ import annotations

import base64
import json
import time
import warnings
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

#: alg -> a function making a private key for it
_MAKERS = {
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ES384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "EdDSA": lambda: ed25519.Ed25519PrivateKey.generate(),
}
_RSA_KEY: Any = None


def private_key(alg: str) -> Any:
    """A fresh private key for ``alg`` (RSA keys are made once and reused: they are slow)."""
    global _RSA_KEY
    if alg[:2] in ("RS", "PS"):
        if _RSA_KEY is None:
            _RSA_KEY = _MAKERS["RS256"]()
        return _RSA_KEY
    return _MAKERS[alg]()


def new_rsa_key() -> Any:
    return _MAKERS["RS256"]()


def public_jwk(key: Any, kid: str | None, alg: str | None = None) -> dict[str, Any]:
    """The public JWK of private ``key``, with ``kid`` and (optionally) ``alg``."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        data["kid"] = kid
    if alg is not None:
        data["alg"] = alg
    data["use"] = "sig"
    return data


def jwks(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(entries)}).encode()


def claims(**extra: Any) -> dict[str, Any]:
    """Valid claims: ``exp`` an hour ahead, plus ``extra`` (a None value removes the claim)."""
    out: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 3600}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def hs256(secret: str, payload: dict[str, Any], *, alg: str = "HS256", headers: dict[str, Any] | None = None) -> str:
    with warnings.catch_warnings():  # Spooky's example secrets are short; PyJWT warns
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(payload, secret, algorithm=alg, headers=headers)


def signed(key: Any, alg: str, payload: dict[str, Any], kid: str | None) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    """A token with ``alg`` (default none) and an empty signature."""
    return f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64(json.dumps(payload).encode())}."


def raw_token(header: dict[str, Any], payload: Any, secret: str) -> str:
    """A token signed with HS256 whatever ``header`` says (to test header and payload rules)."""
    import hashlib
    import hmac

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"
