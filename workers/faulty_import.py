"""Moved to ``testapps.faulty_import``; this name keeps old command lines working."""

from testapps.faulty_import import *  # noqa: F403
