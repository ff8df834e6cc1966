"""Moved to ``testapps.slow``; this name keeps old command lines working."""

from testapps.slow import *  # noqa: F403
