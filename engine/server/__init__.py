"""The aiohttp server: app factory, routes, WebSocket protocol, queue and history."""
