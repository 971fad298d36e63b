"""Example filters for spooky-trio (docs/plugins.md): each module is one filter, named in a
config by the entry point its package declares (pyproject.toml).

* ``tenant-header`` (:mod:`.tenant`): route by a tenant header, with an allowlist;
* ``hmac-signer`` (:mod:`.signer`): sign each request for the backend (HMAC-SHA256);
* ``request-id`` (:mod:`.request_id`): give every request an id, echoed in the answer.
"""

from spooky_trio.plugin import require_api

# the API these filters are written against: 1.0 or a later 1.x
require_api(1, 0)
