"""Structured log lines: one JSON object per event, on stderr.

Machines (log shippers, tests) parse them; people can still read them. Events are named
(``model_loaded``, ``request_failed``, ...) and carry their fields flat.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

logger = logging.getLogger("shoal")
#: A string field longer than this is cut: a client's 60,000-character model name (echoed in
#: its error) must not make every log line it causes that long.
FIELD_LIMIT = 2048


def _capped(value: str) -> str:
    if len(value) <= FIELD_LIMIT:
        return value
    return f"{value[:FIELD_LIMIT]}... ({len(value) - FIELD_LIMIT} more characters)"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            line[key] = _capped(value) if isinstance(value, str) else value
        if record.exc_info and record.levelno >= logging.ERROR:
            line["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})
