"""Leave orphans behind, for the PID 1 chaos scenario: ``testapps.orphans:Orphans``.

A line ``orphan`` makes the worker fork a child that forks a grandchild and exits at
once; the worker collects its child, so the grandchild is re-parented to the nearest
subreaper, or to PID 1 of its PID namespace. The grandchild exits after ``ORPHAN_LIFE``
seconds (default 0.2): whoever adopted it must reap it, or it stays a zombie. The answer
is ``<worker pid> orphaned``. Any other line is answered ``<pid> <line>``.
"""

from __future__ import annotations

import os
import time

from testapps._lines import LineConsumer

LIFE = float(os.environ.get("ORPHAN_LIFE", "0.2"))


def _leave_an_orphan() -> None:
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    # The child: fork the grandchild and exit without running any Python cleanup (the
    # worker's event loop, sockets and atexit handlers belong to the worker).
    try:
        if os.fork() == 0:
            time.sleep(LIFE)
    finally:
        os._exit(0)


class Orphans(LineConsumer):
    def on_line(self, line: bytes) -> None:
        if line == b"orphan":
            _leave_an_orphan()
            self.write(b"%d orphaned\n" % os.getpid())
        else:
            self.write(b"%d %s\n" % (os.getpid(), line))
        self.finished()
