"""Dropping root after the listeners are bound (``security.privileges``)."""

from __future__ import annotations

import grp
import logging
import os
import pwd

from spooky_trio.config import PrivilegesConfig

log = logging.getLogger("spooky.server")


class PrivilegeError(Exception):
    """``security.privileges`` names a user or group this system does not have."""


def drop_privileges(privileges: PrivilegesConfig) -> None:
    """After binding: a root process switches to ``user``/``group``; others log and skip."""
    if not privileges.enabled:
        return
    if os.geteuid() != 0:
        log.debug("not started as root: privilege drop skipped")
        return
    try:
        gid = grp.getgrnam(privileges.group).gr_gid
        uid = pwd.getpwnam(privileges.user).pw_uid
    except KeyError as exc:
        raise PrivilegeError(f"security.privileges: unknown user or group {exc}") from exc
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    log.info("dropped privileges to %s:%s", privileges.user, privileges.group)
