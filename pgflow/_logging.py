"""Logging set-up for the command line (and for applications that ask for it explicitly).

The library itself never calls this: only ``pgflow`` CLI commands, or an application that wants
the CLI's output, do. It routes structlog through the standard library and gives the root logger
one handler, so pgflow's events, the application's structlog calls and any other library's
``logging`` records come out in one format.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
LOG_FORMATS = ("console", "json")


class _PgflowHandler(logging.StreamHandler[TextIO]):
    """Marks the handler this module installed, so a second call replaces it."""


def configure_logging(
    log_format: str = "console", level: str = "info", *, stream: TextIO | None = None
) -> None:
    """Readable console lines or one JSON object per line, at ``level`` and above, on
    ``stream`` (standard error by default). Replaces any handler an earlier call installed."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {log_format!r}")
    if level not in LOG_LEVELS:
        raise ValueError(f"level must be one of {tuple(LOG_LEVELS)}, got {level!r}")
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        # filter_by_level first: an event below the level costs no processing.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: list[structlog.typing.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if log_format == "json"
        else [structlog.dev.ConsoleRenderer(colors=False)]
    )
    handler = _PgflowHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, _PgflowHandler)]:
        root.removeHandler(existing)
    root.addHandler(handler)
    # --log-level debug means pgflow's debug events, not every library's (psycopg, asyncio).
    root.setLevel(max(LOG_LEVELS[level], logging.INFO))
    logging.getLogger("pgflow").setLevel(LOG_LEVELS[level])
