"""What a new user hit in the built-in canvas (issue 15 part 4), one test per fixed bug: no stray "null"
in the queue and history panels, examples open at a zoom where widgets are drawn, the error panel goes
with the workflow it belongs to, one toast per execution error, full widget labels at the default node
width, the lightbox enlarges small images, one button per label, Ctrl+S asks for the file name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.browser.helpers import wait_until, workflow

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def stub_chain(steps: int = 4, prompt: str = "a cat", with_model: bool = True) -> dict:
    """An API-format StubLoader -> StubSampler -> StubDecode -> StubSave prompt (opened as a graph)."""
    sampler = {"seed": 1, "steps": steps, "cfg": 7.0, "prompt": prompt, "enabled": True, "sampler": "euler"}
    if with_model:
        sampler["model"] = ["1", 0]
    return {
        "1": {"class_type": "StubLoader", "inputs": {"ckpt_name": "tiny_a.safetensors"}},
        "2": {"class_type": "StubSampler", "inputs": sampler},
        "3": {"class_type": "StubDecode", "inputs": {"samples": ["2", 0]}},
        "4": {"class_type": "StubSave", "inputs": {"images": ["3", 0], "filename_prefix": "newuser"}},
    }


def open_doc(page, doc, name=None) -> None:
    page.evaluate(
        """async ([doc, name]) => { const m = await import('./js/files.js');
        if (!m.loadAnyDocument(window.diffgraph.app, doc, name)) throw new Error('not a workflow'); }""",
        [doc, name],
    )


def wait_connected(page) -> None:
    page.wait_for_function("() => window.diffgraph.api.connected", timeout=10000)


def wait_idle(page) -> None:
    wait_until(
        page,
        "() => window.diffgraph.api.getQueue().then((q) => q.queue_running.length + q.queue_pending.length === 0)",
    )


def test_queue_and_history_panels_show_no_stray_null(page):
    wait_connected(page)
    open_doc(page, stub_chain(steps=10))  # 0.5 s per run, three runs
    page.fill("#batch-count", "3")
    page.click("#queue-btn")
    page.click("#queue-panel-btn")
    page.wait_for_selector(".queue-item.running", timeout=10000)
    assert "null" not in page.inner_text("#side-panel")
    wait_idle(page)
    page.click("#history-btn")
    page.wait_for_selector(".history-item", timeout=10000)
    assert "null" not in page.inner_text("#side-panel")


def test_example_opens_at_a_zoom_where_widgets_are_drawn(page, server):
    # Twelve samplers in a row: fitting all of them would zoom to ~0.25, below widget level (0.45).
    nodes = []
    for k in range(12):
        nodes.append(
            {
                "id": k + 1,
                "type": "StubSampler",
                "pos": [k * 420, 100],
                "size": [300, 330],
                "flags": {},
                "order": k,
                "mode": 0,
                "inputs": [{"name": "model", "type": "MODEL", "link": None}],
                "outputs": [{"name": "LATENT", "type": "LATENT", "links": None}],
                "properties": {},
                "widgets_values": [k, "fixed", 4, 7.0, "a cat", True, "euler"],
            }
        )
    folder = Path(server.folders.workflows)
    folder.mkdir(parents=True, exist_ok=True)
    example = folder / "wide_newuser.json"
    example.write_text(
        json.dumps({"last_node_id": 12, "last_link_id": 0, "nodes": nodes, "links": [], "version": 0.4})
    )
    try:
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        page.click("#examples-btn")
        page.click(".dg-menu-item[data-label='wide_newuser']")
        page.wait_for_function("() => window.diffgraph.app.graph.nodes.size === 12")
    finally:
        example.unlink()
    view = page.evaluate("() => window.diffgraph.app.view")
    assert view["scale"] >= 0.45
    # The graph's top-left corner is on screen, not scrolled away.
    x, y = page.evaluate("() => window.diffgraph.app.toScreen(0, 100 - 26)")
    assert 0 <= x < 200 and 0 <= y < 200
    # The file's name is offered when saving it.
    assert page.evaluate("() => window.diffgraph.app.workflowName") == "wide_newuser"


def test_error_panel_goes_when_another_workflow_opens(page):
    page.console.allow_response("/api/prompt", 400)
    wait_connected(page)
    open_doc(page, stub_chain(with_model=False))  # the sampler's model input is missing: a 400
    page.click("#queue-btn")
    page.wait_for_selector("#error-panel:not(.hidden)", timeout=10000)
    assert page.evaluate("() => window.diffgraph.app.nodeErrors.size") > 0
    open_doc(page, stub_chain())
    page.wait_for_selector("#error-panel.hidden", state="attached", timeout=5000)
    assert page.evaluate("() => window.diffgraph.app.nodeErrors.size") == 0
    # ... and the Default / Clear buttons switch workflows too.
    open_doc(page, stub_chain(with_model=False))
    page.click("#queue-btn")
    page.wait_for_selector("#error-panel:not(.hidden)", timeout=10000)
    page.click("#clear-btn")
    page.wait_for_selector("#error-panel.hidden", state="attached", timeout=5000)


def test_an_execution_error_is_toasted_once(page):
    wait_connected(page)
    open_doc(page, stub_chain(prompt="explode"))
    page.click("#queue-btn")
    page.wait_for_selector("#error-panel:not(.hidden)", timeout=15000)
    wait_idle(page)
    # The WebSocket's execution_error and the /history entry fetched afterwards both report it.
    wait_until(page, "() => window.diffgraph.runner.waiting.size === 0")
    page.wait_for_timeout(500)
    # Opening the failed run from the history panel shows its error again, without another toast.
    page.click("#history-btn")
    page.click(".history-item.failed")
    page.wait_for_selector("#error-panel:not(.hidden)")
    toasts = page.locator(".toast.error").all_inner_texts()
    assert len([t for t in toasts if "exploded on purpose" in t]) == 1, toasts


def test_widget_labels_are_whole_at_the_default_width(page):
    """Nodes added fresh (default size) draw every widget label uncut: drawn texts are recorded."""
    page.evaluate(
        """() => { const {app} = window.diffgraph; app.loadDocument({nodes: [], links: []});
        const types = ['StubSampler', 'StubLoader', 'StubSave', 'KSampler', 'KSamplerAdvanced', 'EmptyLatentImage',
          'LoadImageMask', 'CheckpointLoaderSimple'].filter((t) => app.schemas.get(t));
        types.forEach((t, k) => app.addNode(t, [30 + (k % 4) * 330, 40 + Math.floor(k / 4) * 420]));
        app.view = {scale: 1, offset: [0, 0]};
        window.__drawn = [];
        const ctx = app.canvas.getContext('2d'); const orig = ctx.fillText.bind(ctx);
        ctx.fillText = (text, ...rest) => { window.__drawn.push(String(text)); return orig(text, ...rest); };
        app.setDirty(); }"""
    )
    page.set_viewport_size({"width": 1400, "height": 900})
    wait_until(page, "() => window.__drawn.length > 0")
    page.wait_for_timeout(100)
    missing = page.evaluate(
        """() => { const {app, geometry} = window.diffgraph; const drawn = new Set(window.__drawn); const out = [];
        for (const n of app.graph.nodes.values()) {
          const b = geometry.nodeBounds(n); const [x, y] = app.toScreen(b[0] + b[2], b[1] + b[3]);
          if (x > innerWidth || y > innerHeight - 40) continue;  // off screen: not drawn
          for (const w of n.visibleWidgets()) if (w.kind !== 'textarea' && w.kind !== 'button' && !drawn.has(w.name)) out.push(`${n.type}.${w.name}`);
        }
        return out; }"""
    )
    assert page.evaluate("() => window.diffgraph.app.graph.nodes.size") >= 3
    assert missing == []


def test_lightbox_enlarges_a_small_image(page):
    page.evaluate(
        """() => { const c = document.createElement('canvas'); c.width = 64; c.height = 48;
        c.getContext('2d').fillRect(0, 0, 64, 48);
        window.diffgraph.panels.lightbox({url: c.toDataURL('image/png'), image: {filename: 'small.png'}}); }"""
    )
    page.wait_for_function("() => document.querySelector('#lightbox img').complete")
    box = page.locator("#lightbox img").bounding_box()
    assert box["width"] > 600 or box["height"] > 500, box


def test_toolbar_buttons_have_distinct_labels(page):
    labels = page.evaluate(
        "() => [...document.querySelectorAll('#toolbar button')].filter((b) => !b.classList.contains('hidden'))"
        ".map((b) => b.textContent)"
    )
    names = [re.sub(r"\d+", "", label).strip().lower() for label in labels]
    assert len(names) == len(set(names)), labels
    assert page.inner_text("#queue-btn") == "Run"


def test_ctrl_s_asks_for_the_file_name(page):
    open_doc(page, stub_chain(), "fox.json")
    page.locator("#graph-canvas").click(position={"x": 700, "y": 850})
    page.keyboard.press("Control+s")
    dialog = page.locator("#ask-dialog input")
    dialog.wait_for()
    assert dialog.input_value() == "fox"  # the opened file's name is offered
    dialog.fill("my flow")
    with page.expect_download() as info:
        page.keyboard.press("Enter")
    assert info.value.suggested_filename == "my flow.json"
    saved = json.loads(Path(info.value.path()).read_text())
    assert saved["nodes"] == workflow(page)["nodes"]
    # Escape cancels: no download, no dialog left.
    page.keyboard.press("Control+s")
    dialog.wait_for()
    page.keyboard.press("Escape")
    page.wait_for_selector("#ask-dialog", state="detached")
