"""``python -m pulsar_arbiter [APP] [options]`` and ``python -m pulsar_arbiter ctl ...``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .config import PROG, ConfigError, load_config

__all__ = ["main"]

# Exit status for a bad flag, value or config file: the user's fault, like argparse.
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["ctl"]:
        from .control import ctl_main

        return ctl_main(args[1:])
    try:
        cfg = load_config(args)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from .arbiter import Arbiter
    from .logs import setup_logging

    try:
        setup_logging(cfg)  # the arbiter sets it up again in run(): idempotent
    except OSError as exc:
        print(f"{PROG}: error: --error-log/--access-log: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return Arbiter(cfg, args).run()
