"""Answer every line with the serving worker's pid: ``<pid> <line>``.

python -m pulsar_arbiter workers.whoami:WhoAmI
"""

from __future__ import annotations

import os

from pulsar_arbiter import ProtocolConsumer

PID = b"%d" % os.getpid()


class WhoAmI(ProtocolConsumer):
    buffer = b""

    def data_received(self, data: bytes) -> bytes | None:
        data = self.buffer + data
        line, sep, rest = data.partition(b"\n")
        if not sep:
            self.buffer = data
            return None
        self.write(b"%d %s\n" % (os.getpid(), line))
        self.finished()
        return rest
