"""USR2: the arbiter re-executes itself, the listening sockets inherited (like nginx).

The old arbiter starts ``python -m pulsar_arbiter`` with its own argv (new code, the same
settings read again), passing its listening sockets (``PULSAR_ARBITER_FDS``, see
``ops/systemd.py``) and the write end of a pipe (``PULSAR_ARBITER_UPGRADE_FD``). The new
arbiter starts its workers on those sockets; once its first generation serves it writes
``ready PID`` on the pipe. Then the old one hands over: it drains (without shutting the
shared sockets down) and exits. A new arbiter that exits, closes the pipe without
``ready``, or is not ready in time has failed: the old one kills it if needed and serves
on. The ``--pid`` file follows the arbiter that serves: the old one's is renamed
``FILE.oldbin`` for the hand-over and renamed back if the new one fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import MutableMapping, Sequence

from ..ops.systemd import inherited_env

__all__ = ["UPGRADE_FD", "Upgrade", "oldbin", "take_ready_pipe", "tell_ready"]

#: The variable that names the pipe a new arbiter says ``ready PID`` on.
UPGRADE_FD = "PULSAR_ARBITER_UPGRADE_FD"
# Bytes read from the pipe at most: one short line is all that comes.
MAX_READY_LINE = 64


def oldbin(path: str) -> str:
    """Where the old arbiter's pid file goes during a hand-over (nginx's name)."""
    return path + ".oldbin"


class Upgrade:
    """One new arbiter being started by this (old) one."""

    def __init__(self, proc: subprocess.Popen[bytes], pipe: int, deadline: float) -> None:
        self.proc = proc
        self.pipe = pipe  # read end, non-blocking
        self.deadline = deadline
        self._data = b""
        self._eof = False

    @classmethod
    def start(
        cls, argv: Sequence[str], named: Sequence[tuple[str, socket.socket]], deadline: float
    ) -> Upgrade:
        """Start the new arbiter; OSError if it cannot even be started."""
        read_end, write_end = os.pipe()
        env = dict(os.environ)
        env.update(inherited_env(named))
        env[UPGRADE_FD] = str(write_end)
        # The watchdog follows MAINPID: the new arbiter feeds it once it is the main one.
        env.pop("WATCHDOG_PID", None)
        fds = [sock.fileno() for _, sock in named] + [write_end]
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pulsar_arbiter", *argv],
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        return cls(proc, read_end, deadline)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self, now: float) -> tuple[bool, str] | None:
        """(True, "") once the new arbiter is ready; (False, why) once it failed; None
        while it boots. A failed one that still runs is killed."""
        self._read()
        if self._data.startswith(b"ready"):
            return True, ""
        code = self.proc.poll()
        if code is not None:
            return False, f"it exited with status {code}"
        if self._eof:
            self._kill()
            return False, "it closed the hand-over pipe without being ready"
        if now > self.deadline:
            self._kill()
            return False, "it was not ready in time (--boot-timeout)"
        return None

    def _read(self) -> None:
        while not self._eof and len(self._data) < MAX_READY_LINE:
            try:
                chunk = os.read(self.pipe, MAX_READY_LINE)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._eof = True
            self._data += chunk

    def _kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5.0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pipe)


def take_ready_pipe(environ: MutableMapping[str, str] | None = None) -> int | None:
    """In a new arbiter: the pipe to say ``ready`` on (removed from the environment)."""
    env = os.environ if environ is None else environ
    text = env.pop(UPGRADE_FD, "")
    if not text.isdigit():
        return None
    fd = int(text)
    try:
        os.set_inheritable(fd, False)
    except OSError:
        return None
    return fd


def tell_ready(fd: int) -> None:
    """Tell the old arbiter we serve; it drains and exits."""
    with contextlib.suppress(OSError):
        os.write(fd, f"ready {os.getpid()}\n".encode())
    with contextlib.suppress(OSError):
        os.close(fd)
