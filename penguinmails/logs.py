"""Logging: one JSON object a line in production, readable text at a terminal.

Every call passes `extra={"action": ...}` so logs can be queried by what happened.
Anything that looks like a secret is masked before it is written.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET = re.compile(
    r"\b(pk|sk|pmat|pmrt)_(live|test)_[A-Za-z0-9]+|\bpm(cs|ac)_[A-Za-z0-9]+|whsec_[A-Za-z0-9+/=]+"
)
_SECRET_KEYS = {"password", "secret", "api_key", "token", "authorization"}


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET.sub("[redacted]", value)
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _mask(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = "[redacted]" if key in _SECRET_KEYS else _mask(value)
        if record.exc_info:
            entry["exception"] = _mask(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={'[redacted]' if k in _SECRET_KEYS else _mask(v)}"
            for k, v in vars(record).items()
            if k not in _STANDARD
        )
        line = (
            f"{datetime.now().strftime('%H:%M:%S')} {record.levelname:<7} "
            f"{_mask(record.getMessage())} {extras}".rstrip()
        )
        if record.exc_info:
            line += "\n" + _mask(self.formatException(record.exc_info))
        return line


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "pgserver", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
