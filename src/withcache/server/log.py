"""Log lines: one per event, `key=value` pairs or a JSON object, never a secret.

Callers pass only display URLs and never Authorization values, passwords or
cookies; this module only formats.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

logger = logging.getLogger("withcache")
FORMATS = ("kv", "json")
# A library's message may quote a raw request line (aiohttp's "Invalid header
# value char: b'Authorization: ...'"); such values are cut out.
_SECRET_HEADER_RE = re.compile(
    r"((?:proxy-)?authorization|cookie|set-cookie|x-csrf-token)(\W{1,4})[^\n'\"]*", re.IGNORECASE
)


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def _stamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


def _event(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    fields = getattr(record, "fields", None)
    if fields is None:  # a library's record (aiohttp, asyncio): one line all the same
        return record.name, {"message": _redact(record.getMessage())}
    return record.getMessage(), fields


def _redact(text: str) -> str:
    return _SECRET_HEADER_RE.sub(r"\1\2<redacted>", text)


def _traceback(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    return _redact(formatter.formatException(record.exc_info))  # type: ignore[arg-type]


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event, fields = _event(record)
        pairs = " ".join(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
        line = f"{_stamp(record)} level={record.levelname.lower()} event={event}"
        if pairs:
            line += " " + pairs
        if record.exc_info:
            line += " traceback=" + _quote(_traceback(self, record))
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line; `time`, `level` and `event` come first, then
    the fields (numbers stay numbers; anything else becomes its text)."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = _event(record)
        line: dict[str, Any] = {
            "time": _stamp(record), "level": record.levelname.lower(), "event": event,
        }  # fmt: skip
        for key, value in fields.items():
            if value is not None and key not in line:
                line[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            line["traceback"] = _traceback(self, record)
        return json.dumps(line, ensure_ascii=False)


def _client_error_as_refusal(record: logging.LogRecord) -> bool:
    """aiohttp logs a malformed request (bad header bytes, a request line too
    long) as a server error with a traceback; it is bad input: one info line."""
    error = record.exc_info[1] if record.exc_info else None
    if record.name == "aiohttp.server" and isinstance(error, HttpProcessingError):
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.msg, record.args = "request.refused", ()
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.fields = {"status": error.code, "reason": _redact(error.message), "peer": peer}
    return True


def setup(level: int = logging.INFO, format: str = "kv") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if format == "json" else KeyValueFormatter())
    handler.addFilter(_client_error_as_refusal)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    # Libraries' warnings and errors (aiohttp, asyncio) in the same format.
    logging.root.handlers[:] = [handler]
    logging.root.setLevel(logging.WARNING)


def info(event: str, **fields: Any) -> None:
    logger.info(event, extra={"fields": fields})


def warning(event: str, **fields: Any) -> None:
    logger.warning(event, extra={"fields": fields})


def error(event: str, exc_info: bool = False, **fields: Any) -> None:
    logger.error(event, exc_info=exc_info, extra={"fields": fields})
