"""Make development certificates on the spot: a local CA and a localhost leaf (trustme).

``python -m spooky_trio.devtools.devcerts DIR`` writes ``ca.pem``, ``localhost.pem`` and
``localhost.key`` (SANs localhost, 127.0.0.1, ::1) unless they already exist.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trustme


def make_dev_certs(directory: Path) -> bool:
    """Create the files if any is missing; return True when new ones were written."""
    files = [directory / n for n in ("ca.pem", "localhost.pem", "localhost.key")]
    if all(f.exists() for f in files):
        return False
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="spooky-trio dev CA")
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca.cert_pem.write_to_path(str(files[0]))
    leaf.cert_chain_pems[0].write_to_path(str(files[1]))
    leaf.private_key_pem.write_to_path(str(files[2]))
    files[2].chmod(0o600)
    return True


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".dev-certs")
    if make_dev_certs(target):
        print(f"dev certificates written to {target}/ (CA: {target}/ca.pem)")


if __name__ == "__main__":
    main()
