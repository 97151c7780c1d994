"""Structured JSON logs, one object per line, configured once by the command that starts a process."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}

# Credentials never reach a log line, whoever wrote it (uvicorn names a socket's URL, ?token= included,
# at debug level): query tokens, bearer values, API keys and anything shaped like a JWT are masked.
_SECRETS = re.compile(
    r"(?P<keep>[?&]token=|(?i:bearer)\s+)[^&\s\"',]+"
    r"|nf_[A-Za-z0-9_-]{8,}"
    r"|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
)


def redact(text: str) -> str:
    """``text`` with every credential in it replaced by ``[redacted]``."""
    return _SECRETS.sub(lambda m: (m.group("keep") or "") + "[redacted]", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self._node = node_id

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "node_id": self._node,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(out, default=str).decode())


def configure(level: str, node_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log would double every request line; errors still come through.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # One info line per socket open/close is noise at thousands of sockets; warnings still come through.
    logging.getLogger("uvicorn.error").setLevel(max(root.level, logging.WARNING))
