"""Moved to ``testapps.boot_flag``; this name keeps old command lines working."""

from testapps.boot_flag import *  # noqa: F403
