"""structlog setup: JSON lines in production, a readable console on a TTY.

``configure`` is called once, by the CLI's ``main``; library code only does
``log = structlog.get_logger()``. A redaction processor runs last before
rendering, so no secret reaches stderr: database passwords in URLs, AWS
secret keys and session tokens (by value, read from the environment), and
presigned URL signatures and credentials.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

_URL_PASSWORD = re.compile(r"(://[^:/@?\s]*:)[^@/?\s]*@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|[^\s&]+)", re.IGNORECASE)
_SIGNATURE = re.compile(
    r"((?:X-Amz-Signature|X-Amz-Security-Token|X-Amz-Credential|Signature|AWSAccessKeyId)=)[^&\s\"']+",
    re.IGNORECASE,
)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "PGPASSWORD")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret it may hold replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    text = _SIGNATURE.sub(r"\1***", text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _environment_secrets() -> list[str]:
    return [os.environ[name] for name in _SECRET_ENV if os.environ.get(name)]


class Redactor:
    """structlog processor that scrubs every string value of an event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = [*secrets, *_environment_secrets()]

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return scrub(value, self._secrets)
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._clean(v) for v in value)
        return value

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
        return {key: self._clean(value) for key, value in event.items()}


class _StderrLogger:
    """Writes each rendered line to whatever ``sys.stderr`` is at that moment."""

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _StdlibBridge(logging.Handler):
    """Libraries that log through stdlib ``logging`` (psycopg_pool, botocore,
    urllib3) as structlog lines: rendered and redacted like ours, one line
    each, rather than Python's bare last-resort text on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("trr_assets"):
            # Our own lines, sent to ``logging`` by ``quiet_unless_configured``
            # after ``configure`` installed this bridge: back to structlog they
            # would come here again, without end.
            return
        try:
            message = record.getMessage()
        except Exception:  # a library's malformed format arguments
            message = str(record.msg)
        structlog.get_logger().log(record.levelno, "library_log", logger=record.name, message=message)


def configure(*, format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog for the process (once, from ``main``); logs go to stderr."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibBridge)]:
        root.removeHandler(handler)
    root.addHandler(_StdlibBridge(logging.WARNING))
    factory: Any = (lambda *args: _StderrLogger()) if stream is None else structlog.PrintLoggerFactory(file=stream)
    stream = stream or sys.stderr
    use_console = format == "console" or (format == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            Redactor(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def quiet_unless_configured() -> None:
    """For library entry points (the presigner): if the program has not set up
    structlog, send trr-assets' lines to the standard ``logging`` module.

    structlog's own default prints every line, debug included, on stdout,
    which would land in a web server's responses or its console. Through
    ``logging`` (loggers named after our modules, ``trr_assets.*``) the
    program's logging configuration decides; with none, Python shows
    warnings and errors on stderr and nothing else. A program that
    configures structlog, before or after, keeps its own configuration.
    """
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            Redactor(),
            structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
