"""Exit statuses, by whose fault: each says what the caller should do next."""

from __future__ import annotations

__all__ = [
    "EXIT_BOOT_FAILURE",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "WORKER_ABORTED",
    "WORKER_BOOT_ERROR",
]

#: Stopped as asked.
EXIT_OK = 0
#: The arbiter could not start for a reason of the machine (a port in use, a pid file).
EXIT_ERROR = 1
#: A bad flag, value or config file: the user's fault, as argparse has it.
EXIT_USAGE = 2
#: The workers cannot boot (the app fails to import or to start): restarting the arbiter
#: as it is will not help; a supervisor (systemd) should not loop on it.
EXIT_BOOT_FAILURE = 3
#: A worker whose app failed to load: "do not respawn me blindly".
WORKER_BOOT_ERROR = 3
#: A worker that got ABRT (its heartbeat timeout) and ran ``worker_abort``: as gunicorn's.
WORKER_ABORTED = 1
