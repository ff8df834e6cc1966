"""The runtime: the arbiter process and its workers.

``supervisor`` decides (pure, tested without forking); ``arbiter`` carries its decisions
out (fork, signals, sockets); ``worker`` is what runs in each forked process; ``handoff``
passes idle connections between workers; ``apps`` imports what the workers serve. It
builds on every other layer: the library (top level), ``http``, ``ipc`` and ``ops``.
"""
