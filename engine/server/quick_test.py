"""`diffgraph serve --quick-test-for-ci`: start the server as `serve` would, answer one /object_info, stop.

ComfyUI's flag of the same name loads its nodes, builds the server and exits without serving. Ours goes one
step further and proves the server answers: the app (with its worker and queue recovery) is started on a
free loopback port, one GET /object_info goes through every middleware, then everything is stopped as on
SIGTERM. The exit status says whether the answer was a JSON object; a CI job or a start-up benchmark can run
it without picking a port or killing a process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from aiohttp import ClientSession, web

from engine.runtime import Runtime
from engine.server.app import create_app
from engine.server.config import ServerConfig


async def _start_answer_stop(runtime: Runtime, config: ServerConfig) -> tuple[int, int, int]:
    """(HTTP status, node types in the answer, body bytes) of one GET /object_info on a started app."""
    runner = web.AppRunner(create_app(runtime, config), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, 0)
        await site.start()
        port = runner.addresses[0][1]
        headers = {"Authorization": f"Bearer {config.access_token}"} if config.access_token else {}
        url = f"http://{config.host}:{port}/object_info"
        async with ClientSession() as session, session.get(url, headers=headers) as response:
            body = await response.read()
            nodes = await response.json() if response.status == 200 else {}
        return response.status, len(nodes) if isinstance(nodes, dict) else 0, len(body)
    finally:
        await runner.cleanup()


def quick_test(runtime: Runtime, config: ServerConfig) -> bool:
    """Start, answer one /object_info, stop; prints one line and returns whether the answer was good.
    Always on 127.0.0.1 (a free port), whatever --listen/--port say: a check must not expose anything."""
    loopback = dataclasses.replace(config, host="127.0.0.1", port=0)
    started = time.perf_counter()
    status, nodes, size = asyncio.run(_start_answer_stop(runtime, loopback))
    ok = status == 200 and nodes == len(runtime.registry)
    print(
        f"diffgraph quick test: /object_info answered {status} with {nodes} of {len(runtime.registry)} "
        f"node types ({size} bytes); server start, answer and stop took {time.perf_counter() - started:.2f} s",
        flush=True,
    )
    return ok
