"""Payload logging: every request and response of a model or graph as CloudEvents, sent to
an HTTP collector, a Kafka topic or files, spooled to disk while the sink is down.

See ``docs/observability.md``. The request path does one thing (:meth:`Channel.put`); the
rest runs on the logger's thread.
"""

from .config import LoggerConfig
from .logger import PayloadLogger, Route, header_metadata
from .record import Record

__all__ = ["LoggerConfig", "PayloadLogger", "Record", "Route", "header_metadata"]
