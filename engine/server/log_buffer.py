"""The last log lines in memory, for the official frontend's logs panel (`/internal/logs`)."""

from __future__ import annotations

import logging
import time
from collections import deque

LOG_CAPACITY = 300  # lines kept (ComfyUI keeps 300)
# One line per HTTP request would drown the panel, whose own polling would fill it.
SKIPPED_LOGGERS = ("diffgraph.server.access",)


class LogBuffer(logging.Handler):
    """The last LOG_CAPACITY log lines, for the frontend's logs panel (ComfyUI's {t, m} entries)."""

    def __init__(self, capacity: int = LOG_CAPACITY):
        super().__init__(logging.INFO)
        self.entries: deque[dict[str, str]] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(SKIPPED_LOGGERS):
            return
        try:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            self.entries.append({"t": stamp, "m": self.format(record) + "\n"})
        except Exception:  # logging must never fail the caller
            self.handleError(record)
