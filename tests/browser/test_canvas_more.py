"""More canvas behaviour: image upload on LoadImage, copy/paste between tabs, reroutes carrying a type,
middle-mouse panning."""

from __future__ import annotations

import io

import pytest

from tests.browser.helpers import (
    add_node_by_search,
    api_prompt,
    clear_canvas,
    drag,
    socket_xy,
    title_xy,
    widget_rect,
    workflow,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_load_image_upload_sets_the_widget_and_shows_the_image(page, server):
    from PIL import Image

    clear_canvas(page)
    node = add_node_by_search(page, (300, 200), "load image")
    assert page.evaluate("(id) => window.diffgraph.app.graph.nodes.get(id).type", node) == "LoadImage"
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (0, 200, 0)).save(buf, format="PNG")
    x, y, w, h = widget_rect(page, node, "upload")
    # Headless Chromium occasionally drops the first file-chooser request on a loaded machine (the
    # click lands, the dialog event never fires); a person would click again, and so does the test.
    for attempt in range(3):
        try:
            with page.expect_file_chooser(timeout=8000) as chooser:
                page.mouse.click(x + w / 2, y + h / 2)
            break
        except Exception:
            if attempt == 2:
                raise
    chooser.value.set_files(files=[{"name": "green.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    page.wait_for_function(
        "(id) => window.diffgraph.app.graph.nodes.get(id).widget('image').value === 'green.png'", arg=node
    )
    assert (server.folders.input / "green.png").is_file()
    assert api_prompt(page)[str(node)]["inputs"]["image"] == "green.png"
    assert workflow(page)["nodes"][0]["widgets_values"] == ["green.png", "image"]
    size = page.evaluate(
        """(id) => new Promise((res) => { const img = new Image();
           img.onload = () => res([img.naturalWidth, img.naturalHeight]);
           img.src = window.diffgraph.app.graph.nodes.get(id).imageUrls[0]; })""",
        node,
    )
    assert size == [20, 10]


def test_copy_in_one_tab_paste_in_another(page):
    clear_canvas(page)
    sampler = add_node_by_search(page, (300, 200), "stub sampler")
    page.evaluate(
        "(id) => { const a = window.diffgraph.app; a.graph.nodes.get(id).widget('steps').value = 7; a.changed(); }",
        sampler,
    )
    page.mouse.click(*title_xy(page, sampler))
    page.keyboard.press("Control+c")
    other = page.context.new_page()
    other.goto(page.url)
    other.wait_for_selector("body[data-ready='1']")
    other.click("#clear-btn")
    other.mouse.move(500, 400)
    other.keyboard.press("Control+v")
    pasted = other.evaluate("() => window.diffgraph.app.graph.serialize().nodes")
    assert [(n["type"], n["widgets_values"][2]) for n in pasted] == [("StubSampler", 7)]
    other.close()


def test_reroute_takes_the_type_it_carries(page):
    clear_canvas(page)
    loader = add_node_by_search(page, (100, 200), "stub loader")
    reroute = add_node_by_search(page, (450, 400), "reroute")
    sampler = add_node_by_search(page, (700, 200), "stub sampler")
    decode = add_node_by_search(page, (700, 650), "stub decode")
    drag(page, socket_xy(page, loader, "output", 0), socket_xy(page, reroute, "input", 0))
    assert (
        page.evaluate("(id) => window.diffgraph.app.graph.nodes.get(id).outputs[0].type", reroute) == "MODEL"
    )
    drag(page, socket_xy(page, reroute, "output", 0), socket_xy(page, decode, "input", 0))  # MODEL -> LATENT
    assert page.evaluate("(id) => window.diffgraph.app.graph.nodes.get(id).inputs[0].link", decode) is None
    drag(page, socket_xy(page, reroute, "output", 0), socket_xy(page, sampler, "input", 0))
    assert api_prompt(page)[str(sampler)]["inputs"]["model"] == [str(loader), 0]


def test_middle_mouse_pans_even_over_a_node(page):
    clear_canvas(page)
    node = add_node_by_search(page, (300, 200), "stub loader")
    before = page.evaluate("() => [...window.diffgraph.app.view.offset]")
    pos = page.evaluate("(id) => [...window.diffgraph.app.graph.nodes.get(id).pos]", node)
    x, y = title_xy(page, node)
    page.mouse.move(x, y)
    page.mouse.down(button="middle")
    page.mouse.move(x + 50, y + 30, steps=5)
    page.mouse.up(button="middle")
    after = page.evaluate("() => [...window.diffgraph.app.view.offset]")
    assert after[0] - before[0] == pytest.approx(50, abs=1) and after[1] - before[1] == pytest.approx(
        30, abs=1
    )
    assert page.evaluate("(id) => [...window.diffgraph.app.graph.nodes.get(id).pos]", node) == pos


def test_lost_connection_is_shown_and_recovered(browser, tmp_path):
    from tests.browser.conftest import start_server

    srv = start_server(tmp_path)
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        page = context.new_page()
        page.goto(srv.url)
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_function("() => window.diffgraph.api.connected")
        port = srv.port
        srv.stop()
        page.wait_for_selector("#connection:not(.hidden)", timeout=10000)
        srv = start_server(tmp_path, port=port)
        page.wait_for_function("() => window.diffgraph.api.connected", timeout=15000)
        assert page.locator("#connection.hidden").count() == 1
    finally:
        context.close()
        srv.stop()
