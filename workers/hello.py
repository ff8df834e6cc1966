"""Moved to ``testapps.hello``; this name keeps old command lines working."""

from testapps.hello import *  # noqa: F403
