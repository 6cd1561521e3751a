"""ComfyUI's `comfy_api.feature_flags`: what a connected frontend client supports. diffgraph negotiates no
optional WebSocket features, so every flag reads as unsupported (packs then use the plain messages)."""

from __future__ import annotations

from typing import Any


def get_connection_feature(sockets_metadata: Any, sid: Any, feature_name: str, default: Any = False) -> Any:
    return default


def supports_feature(sockets_metadata: Any, sid: Any, feature_name: str) -> bool:
    return False


def get_server_features() -> dict[str, Any]:
    return {}
