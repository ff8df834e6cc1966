"""The one list of signals: which the arbiter handles, which a worker ignores.

Both sides read it, so the arbiter can block exactly what it handles around a fork and
the child can undo exactly that (see ``spawn``).
"""

from __future__ import annotations

import signal

__all__ = ["ARBITER_SIGNALS", "CLI_STOP_SIGNALS", "IGNORED_IN_WORKER"]

#: Signals the arbiter handles (it installs its handlers for exactly these); a forked
#: child resets them to their defaults before it unblocks signals.
ARBITER_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
)
#: Signals a worker ignores: a Ctrl-C or a job-control signal sent to the whole process
#: group must not stop workers behind the arbiter's back; the arbiter drives them.
IGNORED_IN_WORKER = (
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
#: Signals the CLI records while it starts, before the arbiter's own handlers exist.
CLI_STOP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)
