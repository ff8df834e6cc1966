"""A slow line consumer, for drains: each line is answered after a delay.

    python -m pulsar_arbiter testapps.slow:Slow

The delay is ``SLOW_DELAY`` seconds (default 0.5); a line ``sleep N`` waits N seconds.
The answer is ``<pid> <line>``, so a client can tell which worker served it.
"""

from __future__ import annotations

import asyncio
import os

from testapps._lines import LineConsumer

DELAY = float(os.environ.get("SLOW_DELAY", "0.5"))


class Slow(LineConsumer):
    """Answer each newline-terminated line after ``DELAY`` seconds."""

    def on_line(self, line: bytes) -> None:
        delay = DELAY
        words = line.split()
        if len(words) == 2 and words[0] == b"sleep":
            delay = float(words[1])
        asyncio.get_running_loop().call_later(delay, self._answer, line)

    def _answer(self, line: bytes) -> None:
        if self.connection is not None and not self.connection.closed:
            self.write(b"%d %s\n" % (os.getpid(), line))
        self.finished()
