"""Moved to ``testapps.whoami``; this name keeps old command lines working."""

from testapps.whoami import *  # noqa: F403
