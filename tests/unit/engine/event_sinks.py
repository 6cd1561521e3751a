"""An executor event sink for tests: keeps every event."""

from __future__ import annotations

from typing import Any


class CollectingSink:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    def of_type(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]
