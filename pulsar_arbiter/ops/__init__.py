"""What an operator touches: settings, binds, logs and the control socket.

``config`` is the one settings registry (flags, TOML, validation, ``--help``); ``binds``
parses and opens the listening sockets; ``logs`` sets up logging; ``control`` serves the
control socket and is the ``ctl`` client. Nothing here imports the runtime.
"""
