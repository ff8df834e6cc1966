"""Moved to ``testapps.faulty``; this name keeps old command lines working."""

from testapps.faulty import *  # noqa: F403
