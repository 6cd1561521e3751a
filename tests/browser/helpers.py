"""Page helpers for the browser tests: find sockets and widgets on screen, then use the real mouse."""

from __future__ import annotations

from typing import Any

JS_SOCKET = """([id, kind, slot]) => {
  const {app, geometry} = window.diffgraph;
  const node = app.graph.nodes.get(id);
  const p = kind === 'input' ? geometry.inputPos(node, slot) : geometry.outputPos(node, slot);
  const [x, y] = app.toScreen(p[0], p[1]);
  const r = app.canvas.getBoundingClientRect();
  return [x + r.left, y + r.top];
}"""

JS_WIDGET = """([id, name]) => {
  const {app, geometry} = window.diffgraph;
  const node = app.graph.nodes.get(id);
  const w = geometry.widgetRects(node).find((x) => x.widget.name === name);
  return app.toScreenRect(w.rect);
}"""

JS_TITLE = """(id) => {
  const {app} = window.diffgraph;
  const node = app.graph.nodes.get(id);
  const r = app.toScreenRect([node.pos[0] + 40, node.pos[1] - 20, 10, 10]);
  return [r[0], r[1]];
}"""


def socket_xy(page: Any, node_id: int, kind: str, slot: int) -> tuple[float, float]:
    x, y = page.evaluate(JS_SOCKET, [node_id, kind, slot])
    return x, y


def widget_rect(page: Any, node_id: int, name: str) -> list[float]:
    return page.evaluate(JS_WIDGET, [node_id, name])


def title_xy(page: Any, node_id: int) -> tuple[float, float]:
    x, y = page.evaluate(JS_TITLE, node_id)
    return x, y


def drag(page: Any, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=steps)
    page.mouse.up()


def workflow(page: Any) -> dict[str, Any]:
    return page.evaluate("() => window.diffgraph.app.graph.serialize()")


def api_prompt(page: Any) -> dict[str, Any]:
    return page.evaluate(
        "async () => { const m = await import('./js/apiformat.js');"
        " const a = window.diffgraph.app; return m.uiToApi(a.graph.serialize(), a.schemas); }"
    )


def nodes_of_type(page: Any, node_type: str) -> list[int]:
    return page.evaluate(
        "(t) => [...window.diffgraph.app.graph.nodes.values()].filter((n) => n.type === t).map((n) => n.id)",
        node_type,
    )


def clear_canvas(page: Any) -> None:
    page.click("#clear-btn")
    page.wait_for_function("() => window.diffgraph.app.graph.nodes.size === 0")


def add_node_by_search(page: Any, at: tuple[float, float], query: str) -> int:
    """Double-click the background at `at`, type the query, press Enter; returns the new node's id."""
    before = page.evaluate("() => window.diffgraph.app.graph.lastNodeId")
    page.mouse.dblclick(*at)
    page.wait_for_selector(".dg-search input")
    page.keyboard.type(query)
    page.keyboard.press("Enter")
    page.wait_for_function("(b) => window.diffgraph.app.graph.lastNodeId > b", arg=before)
    return page.evaluate("() => window.diffgraph.app.graph.lastNodeId")


def wait_until(page: Any, js: str, arg: Any = None, timeout: float = 20.0, interval: float = 0.2) -> Any:
    """Poll `js` (which may return a promise; page.evaluate awaits it) until it is truthy."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(js, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {js}")
        time.sleep(interval)
