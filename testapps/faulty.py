"""Misbehaving apps for the runtime's failure tests.

``testapps.faulty:Faulty`` answers line commands:

- ``echo TEXT``: answers ``<pid> TEXT``;
- ``block N``: blocks the worker's event loop for N seconds (time.sleep), so it stops
  beating and the arbiter must kill it after --timeout;
- ``busy N``: keeps the loop busy for N seconds in small steps, still beating;
- ``raise``: raises inside the consumer (the connection closes, the worker serves on).

``testapps.faulty:boot_crash`` fails when the worker builds its protocol factory, and
``testapps.faulty_import:X`` does not import at all.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from testapps._lines import LineConsumer

# Seconds of CPU work between yields to the loop in ``busy``.
BUSY_SLICE = 0.01


class Faulty(LineConsumer):
    def on_line(self, line: bytes) -> None:
        command, _, arg = line.partition(b" ")
        if command == b"block":
            time.sleep(float(arg))
            self._answer(b"blocked")
        elif command == b"busy":
            self.task = asyncio.ensure_future(self._busy(float(arg)))
        elif command == b"raise":
            raise RuntimeError("faulty consumer raised on purpose")
        else:
            self._answer(arg)

    async def _busy(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            end = time.monotonic() + BUSY_SLICE
            while time.monotonic() < end:
                pass
            await asyncio.sleep(0)
        self._answer(b"done")

    def _answer(self, text: bytes) -> None:
        self.write(b"%d %s\n" % (os.getpid(), text))
        self.finished()


def boot_crash() -> Any:
    """A protocol-factory callable that fails at boot."""
    raise RuntimeError("boot_crash: this app fails to start on purpose")
