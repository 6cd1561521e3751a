"""The application's state, read by the module-level handlers through typed keys (aiohttp's AppKey)."""

from __future__ import annotations

from aiohttp import web

from engine.runtime import Runtime
from engine.server.config import ServerConfig
from engine.server.log_buffer import LogBuffer
from engine.server.protocol import ClientHub
from engine.server.store import PromptStore
from engine.server.userdata import UserFiles
from engine.server.worker import PromptQueue

RUNTIME_KEY = web.AppKey("runtime", Runtime)
CONFIG_KEY = web.AppKey("config", ServerConfig)
QUEUE_KEY = web.AppKey("queue", PromptQueue)
STORE_KEY = web.AppKey("store", PromptStore)
HUB_KEY = web.AppKey("hub", ClientHub)
USER_FILES_KEY = web.AppKey("user_files", UserFiles)
LOG_BUFFER_KEY = web.AppKey("log_buffer", LogBuffer)
