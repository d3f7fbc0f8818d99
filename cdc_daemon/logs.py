"""Structured logging (structlog): JSON lines on stderr, console on a terminal, secrets redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_secrets: set[str] = set()
REDACTED = "[redacted]"


def register_secret(value: str) -> None:
    """Never print this string (an API key, a token) in any log line."""
    if len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    return text


def _redact_processor(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if _secrets:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = redact(value)
            elif isinstance(value, BaseException):
                event[key] = redact(str(value))
    return event


_level = logging.INFO  # the configured one (configure_logging)


def debug_enabled() -> bool:
    """For a line logged a thousand times a second: skip even building it (structlog's logger
    proxy binds a new logger at every call, filtered or not)."""
    return _level <= logging.DEBUG


def configure_logging(fmt: str | None = None, level: str = "info") -> None:
    global _level
    _level = logging.getLevelNamesMapping()[level.upper()]
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # `database` in a databases: daemon
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
