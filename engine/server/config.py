"""Server settings: one explicit object built by the CLI (or a test) and handed to the app factory."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

# ComfyUI keeps at most this many history entries (execution.py MAXIMUM_HISTORY_SIZE).
DEFAULT_HISTORY_LIMIT = 10000
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024**2  # ComfyUI's --max-upload-size default (100 MB)
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def default_web_root() -> Path:
    """The repository's `web/` folder (next to the `engine` package)."""
    return Path(__file__).resolve().parent.parent.parent / "web"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8188
    # None with a loopback host: no token needed. The CLI generates one when listening beyond loopback.
    access_token: str | None = None
    cors_origin: str | None = None  # "https://example.org": that origin (and only it) may call the API
    allowed_hosts: list[str] = field(default_factory=list)  # extra Host names accepted (reverse proxies)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    history_limit: int = DEFAULT_HISTORY_LIMIT
    preview_format: str = "jpeg"  # "jpeg" | "png": binary preview frames while sampling
    preview_max_size: int = 512
    store_path: Path | None = None  # default: <user folder>/diffgraph_queue.sqlite3
    web_root: Path | None = None  # default: the repository's web/
    shutdown_grace_s: float = 5.0  # let the running prompt finish this long, then interrupt it

    @property
    def loopback_only(self) -> bool:
        return is_loopback_address(self.host)

    @property
    def token_required(self) -> bool:
        return self.access_token is not None


def is_loopback_address(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the usual localhost names (no DNS lookups: a name that merely
    resolves to loopback today could be rebound tomorrow)."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
