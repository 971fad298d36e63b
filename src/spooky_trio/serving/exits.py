"""How a serving process ends: its startup error and its exit statuses."""

from __future__ import annotations

#: exit status after a second signal cut the drain short
EXIT_FORCED = 1
#: exit status after ``POST restart_path`` drained the server: "restart me" for a supervisor
#: (EX_TEMPFAIL; e.g. systemd ``Restart=on-failure`` or ``RestartForceExitStatus=75``)
EXIT_RESTART = 75


class StartupError(Exception):
    """The server cannot start (bind failure, unreadable certificate...); one-line message."""
