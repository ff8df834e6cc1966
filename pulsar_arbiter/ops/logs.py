"""Logging for the arbiter and its workers: one line per event, the pid in every line."""

from __future__ import annotations

import json
import logging
import sys
from typing import TextIO

from .config import Config

__all__ = ["FORMAT", "reopen_log_files", "setup_logging"]

FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
#: Access lines are formatted whole by --access-log-format (or as JSON).
ACCESS_FORMAT = "%(message)s"
_LOGGERS = ("pulsar_arbiter", "pulsar_arbiter.access")


class JsonFormatter(logging.Formatter):
    """--log-format json: one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"))


def _handler(target: str, fmt: str | logging.Formatter, dash: TextIO) -> logging.Handler:
    """A handler writing to the file ``target``, or to ``dash`` when it is ``-``."""
    handler: logging.Handler
    if target == "-":
        handler = logging.StreamHandler(dash)
    else:
        handler = logging.FileHandler(target, encoding="utf-8")
    handler.setFormatter(fmt if isinstance(fmt, logging.Formatter) else logging.Formatter(fmt))
    return handler


def setup_logging(cfg: Config) -> None:
    """Send the error log to --error-log ('-': stderr) and, when set, access lines to
    --access-log ('-': stdout)."""
    main = logging.getLogger("pulsar_arbiter")
    for handler in list(main.handlers):
        main.removeHandler(handler)
        handler.close()
    error_format = JsonFormatter() if cfg.log_format == "json" else FORMAT
    main.addHandler(_handler(cfg.error_log or "-", error_format, sys.stderr))
    main.setLevel(cfg.log_level.upper())
    main.propagate = False
    access = logging.getLogger("pulsar_arbiter.access")
    for handler in list(access.handlers):
        access.removeHandler(handler)
        handler.close()
    access.propagate = False
    if cfg.access_log:
        access.addHandler(_handler(cfg.access_log, ACCESS_FORMAT, sys.stdout))
        access.setLevel(logging.INFO)
    else:
        access.setLevel(logging.CRITICAL + 1)


def reopen_log_files() -> None:
    """USR1: reopen every log file (after logrotate moved it away)."""
    for name in _LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    handler.close()
                    handler.stream = handler._open()
                finally:
                    handler.release()
