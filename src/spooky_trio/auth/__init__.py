"""Authentication and authorization primitives (``upstream.<pool>.auth``; docs/auth.md).

A policy package of the row beside routing, balancing, health and resilience: plain Python
over request headers and config, plus the outbound calls the auth layer makes (JWKS, OIDC
discovery and introspection, external auth services) on a Trio-native HTTP client. The
request filters that use these live in ``proxy/auth.py``; the task that owns the outbound
state (JWKS refreshers, discovery fetches, HTTP clients) is :class:`~spooky_trio.auth.store.AuthStore`,
run by the server.

* ``credentials.py``: API keys (constant-time), the bearer token of ``Authorization``;
* ``tokens.py`` / ``claims.py``: JWT verification (PyJWT's algorithms over ``cryptography``)
  with Spooky's exact rules, scopes and roles, ``forward_claims``;
* ``jwks.py``: a JWK Set parsed into verification keys, and the cache state machine
  (refresh, stale-while-error, unknown-``kid`` refetch at most every ``jwks_min_refresh_secs``);
* ``outbound.py``: the HTTP client (httpx on Trio), a deadline and a body bound on every call;
* ``external.py`` / ``oidc.py``: external auth of kind ``http`` and ``oidc``;
* ``store.py``: :class:`AuthStore`, the state that outlives a generation and its tasks.
"""
