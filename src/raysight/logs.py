"""Logging setup shared by the CLI and Ray workers: text on a terminal, JSON lines elsewhere."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors (Loki, CloudWatch, Stackdriver)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: int = logging.INFO, json_lines: bool | None = None) -> None:
    """Send raysight's loggers to stderr once per process (idempotent).

    Args:
        level: threshold for the `raysight` logger tree.
        json_lines: force JSON (True) or text (False); None picks text on a terminal.
    """
    root = logging.getLogger("raysight")
    root.setLevel(level)
    if any(getattr(h, "_raysight", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    use_json = not sys.stderr.isatty() if json_lines is None else json_lines
    handler.setFormatter(
        JsonFormatter() if use_json else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    handler._raysight = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.propagate = False
