"""Log lines: one per event, `key=value` pairs, never a secret.

Callers pass only display URLs and never Authorization values, passwords or
cookies; this module only formats.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

logger = logging.getLogger("withcache")


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = getattr(record, "fields", {})
        pairs = " ".join(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
        line = f"{stamp}Z level={record.levelname.lower()} event={record.getMessage()}"
        if pairs:
            line += " " + pairs
        if record.exc_info:
            line += " traceback=" + _quote(self.formatException(record.exc_info))
        return line


def setup(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def info(event: str, **fields: Any) -> None:
    logger.info(event, extra={"fields": fields})


def warning(event: str, **fields: Any) -> None:
    logger.warning(event, extra={"fields": fields})


def error(event: str, exc_info: bool = False, **fields: Any) -> None:
    logger.error(event, exc_info=exc_info, extra={"fields": fields})
