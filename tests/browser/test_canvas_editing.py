"""The canvas in real headless Chromium against a real server: building, connecting, editing, undo."""

from __future__ import annotations

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


def build_stub_chain(page):
    """Loader -> Sampler -> Decode -> Save, all added by double-click search and connected by mouse."""
    clear_canvas(page)
    loader = add_node_by_search(page, (150, 200), "stub loader")
    sampler = add_node_by_search(page, (480, 200), "stub sampler")
    decode = add_node_by_search(page, (800, 200), "stubdecode")  # fuzzy: no space needed
    save = add_node_by_search(page, (1080, 200), "stub save")
    drag(page, socket_xy(page, loader, "output", 0), socket_xy(page, sampler, "input", 0))
    drag(page, socket_xy(page, sampler, "output", 0), socket_xy(page, decode, "input", 0))
    drag(page, socket_xy(page, decode, "output", 0), socket_xy(page, save, "input", 0))
    return loader, sampler, decode, save


def test_build_by_mouse_and_keyboard_exports_links(page, artifacts):
    loader, sampler, decode, save = build_stub_chain(page)
    prompt = api_prompt(page)
    assert prompt[str(sampler)]["inputs"]["model"] == [str(loader), 0]
    assert prompt[str(decode)]["inputs"]["samples"] == [str(sampler), 0]
    assert prompt[str(save)]["inputs"]["images"] == [str(decode), 0]
    assert prompt[str(sampler)]["inputs"]["steps"] == 4
    assert prompt[str(sampler)]["class_type"] == "StubSampler"
    page.screenshot(path=str(artifacts / "built_graph.png"))


def test_incompatible_connection_is_refused(page):
    loader, sampler, decode, save = build_stub_chain(page)
    # MODEL output onto the IMAGE input of the save node: refused, the existing link stays.
    page.mouse.move(*socket_xy(page, loader, "output", 0))
    page.mouse.down()
    page.mouse.move(*socket_xy(page, save, "input", 0), steps=6)
    target = page.evaluate(
        "() => { const t = window.diffgraph.app.linkDrag.target; return {ok: t.ok, type: t.type}; }"
    )
    assert target == {"ok": False, "type": "IMAGE"}  # shown in red while hovering
    page.mouse.up()
    doc = workflow(page)
    links_into_save = [link for link in doc["links"] if link[3] == save]
    assert len(links_into_save) == 1 and links_into_save[0][1] == decode
    assert page.locator(".toast.error", has_text="Cannot connect MODEL to IMAGE").count() == 1


def test_widgets_drag_clamp_toggle_combo_text(page):
    clear_canvas(page)
    sampler = add_node_by_search(page, (400, 200), "stub sampler")
    value = lambda name: page.evaluate(  # noqa: E731
        "([id, n]) => window.diffgraph.app.graph.nodes.get(id).widget(n).value", [sampler, name]
    )
    x, y, w, h = widget_rect(page, sampler, "steps")
    # Drag right far: each 6 px is one step, clamped at max=10.
    drag(page, (x + w / 2, y + h / 2), (x + w / 2 + 400, y + h / 2), steps=20)
    assert value("steps") == 10
    page.mouse.click(x + 8, y + h / 2)  # left arrow: one step down
    assert value("steps") == 9
    x, y, w, h = widget_rect(page, sampler, "cfg")
    page.mouse.click(x + w - 8, y + h / 2)  # right arrow: +0.5
    assert value("cfg") == 7.5
    page.mouse.click(x + w / 2, y + h / 2)  # click the middle: type a value, clamped to max 30
    page.keyboard.press("Control+A")
    page.keyboard.type("99")
    page.keyboard.press("Enter")
    assert value("cfg") == 30
    x, y, w, h = widget_rect(page, sampler, "enabled")
    page.mouse.click(x + w / 2, y + h / 2)
    assert value("enabled") is False
    x, y, w, h = widget_rect(page, sampler, "sampler")
    page.mouse.click(x + w / 2, y + h / 2)
    page.locator(".dg-combo-menu .dg-menu-item", has_text="heun").click()
    assert value("sampler") == "heun"
    x, y, w, h = widget_rect(page, sampler, "prompt")
    page.mouse.click(x + w / 2, y + h / 2)
    page.keyboard.press("Control+A")
    page.keyboard.type("line one")
    page.keyboard.press("Enter")
    page.keyboard.type("line two")
    page.mouse.click(700, 700)  # blur commits
    assert value("prompt") == "line one\nline two"
    assert workflow(page)["nodes"][0]["widgets_values"] == [
        0,
        "fixed",
        9,
        30,
        "line one\nline two",
        False,
        "heun",
    ]


def test_undo_redo_delete_copy_paste_bypass_mute_collapse(page):
    loader, sampler, decode, save = build_stub_chain(page)
    before = workflow(page)
    page.mouse.click(*title_xy(page, decode))
    page.keyboard.press("Delete")
    assert decode not in [n["id"] for n in workflow(page)["nodes"]]
    assert len(workflow(page)["links"]) == 1
    page.keyboard.press("Control+z")
    after_undo = workflow(page)
    assert after_undo["nodes"] == before["nodes"] and after_undo["links"] == before["links"]
    page.keyboard.press("Control+y")
    assert len(workflow(page)["nodes"]) == 3
    page.keyboard.press("Control+z")
    # Box select loader+sampler (Ctrl+drag on the background), copy, paste elsewhere: links inside kept.
    lx, ly = title_xy(page, loader)
    sx, sy = socket_xy(page, sampler, "output", 0)
    page.keyboard.down("Control")
    drag(page, (lx - 60, ly - 40), (sx + 30, sy + 300))
    page.keyboard.up("Control")
    assert sorted(page.evaluate("() => [...window.diffgraph.app.selected]")) == sorted([loader, sampler])
    page.keyboard.press("Control+c")
    page.mouse.move(300, 650)
    page.keyboard.press("Control+v")
    doc = workflow(page)
    assert len(doc["nodes"]) == 6
    new_ids = sorted(page.evaluate("() => [...window.diffgraph.app.selected]"))
    assert len(new_ids) == 2 and not set(new_ids) & {loader, sampler}
    assert any(link[1] == new_ids[0] and link[3] == new_ids[1] for link in doc["links"])
    # Bypass and mute with the keyboard; the modes are what ComfyUI saves (4 and 2).
    page.mouse.click(*title_xy(page, decode))
    page.keyboard.press("Control+b")
    assert next(n for n in workflow(page)["nodes"] if n["id"] == decode)["mode"] == 4
    page.keyboard.press("Control+m")
    assert next(n for n in workflow(page)["nodes"] if n["id"] == decode)["mode"] == 2
    page.keyboard.press("Control+m")
    assert next(n for n in workflow(page)["nodes"] if n["id"] == decode)["mode"] == 0
    page.keyboard.press("Alt+c")
    assert next(n for n in workflow(page)["nodes"] if n["id"] == decode)["flags"] == {"collapsed": True}


def test_pan_zoom_and_fit(page):
    build_stub_chain(page)
    view = lambda: page.evaluate("() => ({...window.diffgraph.app.view})")  # noqa: E731
    v0 = view()
    drag(page, (700, 700), (800, 750))  # empty background: pan
    v1 = view()
    assert (v1["offset"][0] - v0["offset"][0]) * v0["scale"] == pytest.approx(100, abs=1)
    graph_point = page.evaluate("() => window.diffgraph.app.toGraph(600, 400)")
    page.mouse.move(600, 440)  # canvas starts 40 px below the toolbar
    page.mouse.wheel(0, -300)
    v2 = view()
    assert v2["scale"] > v1["scale"]
    assert page.evaluate("() => window.diffgraph.app.toGraph(600, 400)") == pytest.approx(
        graph_point, abs=0.5
    )
    page.keyboard.press(".")
    bounds = page.evaluate(
        "() => { const d = window.diffgraph; return [...d.app.graph.nodes.values()].map((n) => {"
        " const b = d.geometry.nodeBounds(n); return [...d.app.toScreen(b[0], b[1]), ...d.app.toScreen(b[0]+b[2], b[1]+b[3])]; }); }"
    )
    assert all(b[0] >= 0 and b[1] >= 0 and b[2] <= 1400 and b[3] <= 860 for b in bounds)


def test_drag_from_socket_into_space_offers_matching_nodes(page):
    clear_canvas(page)
    loader = add_node_by_search(page, (200, 200), "stub loader")
    drag(page, socket_xy(page, loader, "output", 0), (700, 300))
    # The list shows the first matches only (many built-in nodes take a MODEL): narrow it to the stubs.
    page.keyboard.type("stub")
    labels = page.locator(".dg-search-item span").all_inner_texts()
    assert "Stub Sampler" in labels and "Stub Save" not in labels  # only nodes taking a MODEL
    page.keyboard.type(" sampler")
    page.keyboard.press("Enter")
    prompt = api_prompt(page)
    assert any(v["inputs"].get("model") == [str(loader), 0] for v in prompt.values())


def test_convert_widget_to_input_group_and_reroute(page):
    clear_canvas(page)
    sampler = add_node_by_search(page, (400, 200), "stub sampler")
    page.mouse.click(*title_xy(page, sampler), button="right")
    page.locator(".dg-menu-item", has_text="Convert widget to input").hover()
    page.locator(".dg-menu-item", has_text="Convert steps to input").click()
    node = workflow(page)["nodes"][0]
    assert node["inputs"][-1] == {"name": "steps", "type": "INT", "link": None, "widget": {"name": "steps"}}
    page.mouse.click(*title_xy(page, sampler))
    page.keyboard.press("Control+g")
    assert len(workflow(page)["groups"]) == 1
    page.mouse.dblclick(900, 600)
    page.keyboard.type("reroute")
    page.keyboard.press("Enter")
    assert any(n["type"] == "Reroute" for n in workflow(page)["nodes"])
