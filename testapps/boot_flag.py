"""An app that boots until a flag file appears, for the crash-at-boot chaos scenario.

    CHAOS_CRASH_FLAG=/tmp/flag python -m pulsar_arbiter testapps.boot_flag:app

``app`` is a protocol-factory callable: it serves ``testapps.whoami:WhoAmI`` while the
file named by ``$CHAOS_CRASH_FLAG`` does not exist, and raises at boot once it does, so
that workers already serving keep serving and every new one crashes at boot.
"""

from __future__ import annotations

import functools
import os

from pulsar_arbiter import Connection
from pulsar_arbiter.protocols import ProtocolFactory
from testapps.whoami import WhoAmI

MESSAGE = "boot_flag: the crash flag is set, this worker fails to boot on purpose"


def app() -> ProtocolFactory:
    flag = os.environ.get("CHAOS_CRASH_FLAG", "")
    if flag and os.path.exists(flag):
        raise RuntimeError(MESSAGE)
    return functools.partial(Connection, WhoAmI)
