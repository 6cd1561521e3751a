"""Running from the canvas: queue with batch count, progress, outputs on the node, errors, queue and
history panels. Real server, real WebSocket, stub nodes that write real PNGs."""

from __future__ import annotations

import pytest

from tests.browser.helpers import add_node_by_search, clear_canvas, wait_until, widget_rect
from tests.browser.test_canvas_editing import build_stub_chain

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RECORD_EVENTS = """() => {
  window.__events = [];
  for (const t of ['executing', 'progress', 'executed', 'execution_error', 'b_preview'])
    window.diffgraph.api.addEventListener(t, (e) => window.__events.push([t, t === 'b_preview' ? null : e.detail]));
}"""


def set_widget(page, node_id, name, value):
    page.evaluate(
        "([id, n, v]) => { const a = window.diffgraph.app; a.graph.nodes.get(id).widget(n).value = v; a.changed(); }",
        [node_id, name, value],
    )


def wait_connected(page):
    page.wait_for_function("() => window.diffgraph.api.connected", timeout=10000)


def test_queue_runs_with_progress_and_shows_output_image(page, artifacts):
    wait_connected(page)
    loader, sampler, decode, save = build_stub_chain(page)
    page.evaluate(RECORD_EVENTS)
    x, y, w, h = widget_rect(page, sampler, "control_after_generate")
    page.mouse.click(x + w / 2, y + h / 2)
    page.locator(".dg-combo-menu .dg-menu-item", has_text="increment").click()
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        "(id) => (window.diffgraph.app.graph.nodes.get(id).imageUrls || []).length > 0",
        arg=save,
        timeout=20000,
    )
    events = page.evaluate("() => window.__events")
    progress = [e[1]["value"] for e in events if e[0] == "progress" and e[1]["node"] == str(sampler)]
    assert progress == [1, 2, 3, 4]
    assert sum(1 for e in events if e[0] == "b_preview") >= 1  # live preview frames arrived
    executing = [e[1]["node"] for e in events if e[0] == "executing"]
    assert str(sampler) in executing and executing[-1] is None
    # control_after_generate: the seed moved on after queueing.
    assert (
        page.evaluate("(id) => window.diffgraph.app.graph.nodes.get(id).widget('seed').value", sampler) == 1
    )
    # The image on the node is a real PNG from /view, decoded by the browser.
    size = page.evaluate(
        """(id) => new Promise((res) => { const url = window.diffgraph.app.graph.nodes.get(id).imageUrls[0];
           const img = new Image(); img.onload = () => res([img.naturalWidth, img.naturalHeight]); img.src = url; })""",
        save,
    )
    assert size == [64, 48]
    page.wait_for_selector("#gallery img.gallery-img")
    page.wait_for_timeout(100)
    page.screenshot(path=str(artifacts / "output_on_node.png"))
    page.click("#gallery img.gallery-img")
    assert page.locator("#lightbox a").get_attribute("href").startswith("http")
    page.keyboard.press("Escape")


def test_batch_count_queues_several_prompts_and_history_loads_a_run(page, server):
    wait_connected(page)
    loader, sampler, decode, save = build_stub_chain(page)
    set_widget(page, sampler, "seed", 100)
    set_widget(page, sampler, "control_after_generate", "increment")
    page.fill("#batch-count", "2")
    page.click("#queue-btn")
    # Each queued prompt moves the seed on by one (control_after_generate = increment).
    page.wait_for_function(
        "(id) => window.diffgraph.app.graph.nodes.get(id).widget('seed').value === 102",
        arg=sampler,
        timeout=10000,
    )
    wait_until(
        page,
        "() => window.diffgraph.api.getHistory(1000).then((h) => Object.values(h).some((v) =>"
        " Object.values(v.prompt[2]).some((n) => n.inputs.seed === 101) && Object.keys(v.outputs || {}).length))",
    )
    page.click("#history-btn")
    page.wait_for_selector(".history-item")
    page.click("#clear-btn")
    page.locator(".history-item").first.click()  # newest first: the run with seed 101
    page.wait_for_function("() => window.diffgraph.app.graph.nodes.size === 4")
    seeds = page.evaluate(
        "() => [...window.diffgraph.app.graph.nodes.values()].filter((n) => n.type === 'StubSampler').map((n) => n.widget('seed').value)"
    )
    assert seeds == [101]
    page.wait_for_function(
        "() => [...window.diffgraph.app.graph.nodes.values()].some((n) => n.type === 'StubSave' && (n.imageUrls || []).length)"
    )


def test_validation_error_is_shown_on_the_node_and_input(page, artifacts):
    page.console.allow_response("/api/prompt", 400)  # the validation error reply
    clear_canvas(page)
    sampler = add_node_by_search(page, (300, 200), "stub sampler")
    decode = add_node_by_search(page, (650, 200), "stub decode")
    save = add_node_by_search(page, (900, 200), "stub save")
    from tests.browser.helpers import drag, socket_xy

    drag(page, socket_xy(page, sampler, "output", 0), socket_xy(page, decode, "input", 0))
    drag(page, socket_xy(page, decode, "output", 0), socket_xy(page, save, "input", 0))
    page.click("#queue-btn")  # the sampler's MODEL input is not connected
    page.wait_for_selector("#error-panel:not(.hidden)")
    errors = page.evaluate(
        "() => Object.fromEntries([...window.diffgraph.app.nodeErrors].map(([k, v]) => [k, [...v.inputs]]))"
    )
    assert errors == {str(sampler): ["model"]}
    assert "model" in page.locator("#error-panel").inner_text()
    page.screenshot(path=str(artifacts / "validation_error.png"))


def test_execution_error_shows_node_message_and_traceback(page):
    wait_connected(page)
    loader, sampler, decode, save = build_stub_chain(page)
    set_widget(page, sampler, "prompt", "explode")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#error-panel:not(.hidden)", timeout=15000)
    panel = page.locator("#error-panel")
    assert f"#{sampler}" in panel.inner_text() and "exploded on purpose" in panel.inner_text()
    panel.locator("summary").click()
    assert (
        "Traceback" in panel.locator("pre").inner_text() or "ValueError" in panel.locator("pre").inner_text()
    )
    assert page.evaluate("(id) => window.diffgraph.app.nodeErrors.has(String(id))", sampler)


def test_queue_panel_lists_running_and_pending_and_deletes(page):
    wait_connected(page)
    loader, sampler, decode, save = build_stub_chain(page)
    set_widget(page, sampler, "steps", 10)  # 0.5 s per run
    set_widget(page, sampler, "control_after_generate", "increment")
    page.fill("#batch-count", "3")
    page.click("#queue-btn")
    page.click("#queue-panel-btn")
    page.wait_for_selector(".queue-item.running", timeout=10000)
    pending = page.locator(".queue-item:not(.running)")
    assert pending.count() >= 1
    n = pending.count()
    pending.first.locator("button.delete").click()
    page.wait_for_function(f"() => document.querySelectorAll('.queue-item:not(.running)').length < {n}")
    page.locator(".queue-item.running button.cancel").click()  # interrupts the running prompt
    wait_until(
        page,
        "() => window.diffgraph.api.getQueue().then((q) => q.queue_running.length + q.queue_pending.length === 0)",
    )


def test_interrupt_shortcut_stops_the_running_prompt(page):
    wait_connected(page)
    loader, sampler, decode, save = build_stub_chain(page)
    set_widget(page, sampler, "steps", 10)
    page.evaluate(RECORD_EVENTS)
    page.evaluate(
        "() => window.diffgraph.api.addEventListener('execution_interrupted', (e) => window.__events.push(['interrupted', e.detail]))"
    )
    page.keyboard.press("Control+Enter")
    page.wait_for_function("() => window.__events.some((e) => e[0] === 'progress')", timeout=10000)
    page.keyboard.press("Control+Alt+Enter")
    page.wait_for_function("() => window.__events.some((e) => e[0] === 'interrupted')", timeout=10000)
    steps = [e[1]["value"] for e in page.evaluate("() => window.__events") if e[0] == "progress"]
    assert max(steps) < 10
    assert page.locator(".toast", has_text="Interrupted").count() == 1
