"""Answer every line with the serving worker's pid: ``<pid> <line>``.

python -m pulsar_arbiter testapps.whoami:WhoAmI
"""

from __future__ import annotations

import os

from testapps._lines import LineConsumer


class WhoAmI(LineConsumer):
    def on_line(self, line: bytes) -> None:
        self.write(b"%d %s\n" % (os.getpid(), line))
        self.finished()
