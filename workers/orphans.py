"""Moved to ``testapps.orphans``; this name keeps old command lines working."""

from testapps.orphans import *  # noqa: F403
