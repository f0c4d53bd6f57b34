"""Structured JSON logs: one event per line, for log shippers."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            event["worker"] = self.worker
        fields = getattr(record, "fields", None)  # logger.info(..., extra={"fields": {...}})
        if isinstance(fields, dict):
            event.update({k: v for k, v in fields.items() if k not in event})
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def configure_logging(level: str = "info", fmt: str = "json", worker: int | None = None) -> None:
    """Log to stderr; a worker process (``worker``: its index) says so in every line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        where = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s"))
    root = logging.getLogger("tenant_proxy")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
