"""The ``logger:`` block of ``model.yaml`` / ``graph.yaml``, and the sink URLs it names.

Example::

    logger:
      url: http://collector:8000/events   # or kafka://host:9092/topic, or file:///var/log/shoal
      mode: all                           # all | request | response
      sample_rate: 1.0                    # fraction of requests logged
      headers: [x-user-id]                # request headers copied into the records

``url`` may be left out when the server has a default (``--payload-log``); ``logger: false``
turns logging off for one model while the server default is on.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import SplitResult, parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMES = ("http", "https", "kafka", "file")
FORMS = "http(s)://host[:port]/path, kafka://host:port/topic or file:///directory"


class LoggerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    """Where the records go; None: the server's ``--payload-log``."""
    mode: Literal["all", "request", "response"] = "all"
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    headers: list[str] = Field(default_factory=list)
    """Request headers copied into the records (extension attribute ``metadata``); only
    these: a record never carries a header nobody asked for (``authorization``, cookies)."""

    @field_validator("url")
    @classmethod
    def _known_sink(cls, value: str | None) -> str | None:
        if value is not None:
            parse_sink_url(value)
        return value

    @field_validator("headers")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [name.strip().lower() for name in value]


def parse_sink_url(url: str) -> SplitResult:
    """The URL's parts, or ValueError saying which forms are accepted."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{url!r} is not a sink URL: use {FORMS}")
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number") from None
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"{url!r}: a file sink is file:///absolute/directory")
        options = parse_qs(parts.query)
        unknown = sorted(set(options) - {"max_bytes"})
        if unknown:
            raise ValueError(f"{url!r}: unknown option {unknown[0]!r} (a file sink takes max_bytes)")
        for value in options.get("max_bytes", []):
            if not value.isdigit() or int(value) <= 0:
                raise ValueError(f"{url!r}: max_bytes must be a positive number of bytes")
    elif not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    if parts.scheme == "kafka" and (not parts.port or not parts.path.strip("/")):
        raise ValueError(f"{url!r}: a Kafka sink is kafka://host:port/topic")
    return parts


def sink_label(url: str) -> str:
    """The URL as metrics and logs show it: without a user name or password."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()
