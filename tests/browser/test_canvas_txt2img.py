"""The real txt2img graph, built from an empty canvas by mouse and keyboard only, run on a tiny random
SD1 checkpoint: progress is reported and the final image appears on the SaveImage node."""

from __future__ import annotations

import pytest

from tests.browser.helpers import add_node_by_search, drag, socket_xy, wait_until, widget_rect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NEEDED = (
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "KSampler",
    "VAEDecode",
    "SaveImage",
)


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    from engine.plugins.loader import load_all_packs
    from engine.registry import NodeRegistry

    registry = NodeRegistry()
    load_all_packs(registry, ())
    if any(n not in registry for n in NEEDED):
        pytest.skip("the model nodes (nodes/loaders.py, sampling.py, ...) are not there yet")
    from tests.browser.conftest import start_server
    from tests.factories.checkpoints import write_tiny_checkpoint

    base = tmp_path_factory.mktemp("dg_txt2img")
    (base / "models" / "checkpoints").mkdir(parents=True)
    write_tiny_checkpoint(base / "models" / "checkpoints" / "tiny_sd1.safetensors", "sd1", seed=1)
    srv = start_server(base, with_models=True)
    yield srv
    srv.stop()


def type_into_widget(page, node_id, name, text, enter=True):
    x, y, w, h = widget_rect(page, node_id, name)
    page.mouse.click(x + w / 2, y + h / 2)
    page.keyboard.press("Control+A")
    page.keyboard.type(text)
    if enter:
        page.keyboard.press("Enter")


def slot(page, node_id, kind, name):
    index = page.evaluate(
        "([id, kind, name]) => { const n = window.diffgraph.app.graph.nodes.get(id);"
        " return (kind === 'input' ? n.inputs : n.outputs).findIndex((s) => s.name === name); }",
        [node_id, kind, name],
    )
    assert index >= 0, (node_id, kind, name)
    return socket_xy(page, node_id, kind, index)


def test_build_and_run_txt2img_by_mouse_and_keyboard(browser, model_server, artifacts):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "404" not in m.text else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(model_server.url)
        page.wait_for_selector("body[data-ready='1']", timeout=15000)
        page.click("#clear-btn")
        ckpt = add_node_by_search(page, (60, 300), "load checkpoint")
        pos = add_node_by_search(page, (380, 120), "clip text encode")
        neg = add_node_by_search(page, (380, 380), "clip text encode")
        latent = add_node_by_search(page, (380, 640), "empty latent image")
        sampler = add_node_by_search(page, (760, 120), "ksampler")
        decode = add_node_by_search(page, (1080, 120), "vae decode")
        save = add_node_by_search(page, (1080, 300), "save image")
        types = page.evaluate("() => [...window.diffgraph.app.graph.nodes.values()].map((n) => n.type)")
        assert types == [
            "CheckpointLoaderSimple",
            "CLIPTextEncode",
            "CLIPTextEncode",
            "EmptyLatentImage",
            "KSampler",
            "VAEDecode",
            "SaveImage",
        ]
        for (a, out), (b, inp) in [
            ((ckpt, "MODEL"), (sampler, "model")),
            ((ckpt, "CLIP"), (pos, "clip")),
            ((ckpt, "CLIP"), (neg, "clip")),
            ((pos, "CONDITIONING"), (sampler, "positive")),
            ((neg, "CONDITIONING"), (sampler, "negative")),
            ((latent, "LATENT"), (sampler, "latent_image")),
            ((sampler, "LATENT"), (decode, "samples")),
            ((ckpt, "VAE"), (decode, "vae")),
            ((decode, "IMAGE"), (save, "images")),
        ]:
            drag(page, slot(page, a, "output", out), slot(page, b, "input", inp))
        type_into_widget(page, pos, "text", "a photo of a cat", enter=False)
        page.mouse.click(700, 800)  # blur commits the multi-line prompt
        type_into_widget(page, latent, "width", "64")
        type_into_widget(page, latent, "height", "64")
        type_into_widget(page, sampler, "steps", "2")
        page.evaluate(
            "() => { window.__progress = []; window.diffgraph.api.addEventListener('progress', (e) => window.__progress.push(e.detail)); }"
        )
        page.keyboard.press("Control+Enter")
        wait_until(
            page,
            "(id) => (window.diffgraph.app.graph.nodes.get(id).imageUrls || []).length > 0",
            save,
            timeout=120,
        )
        progress = page.evaluate("() => window.__progress")
        assert [p["value"] for p in progress if p["node"] == str(sampler)][-1] == 2
        size = page.evaluate(
            """(id) => new Promise((res) => { const img = new Image();
               img.onload = () => res([img.naturalWidth, img.naturalHeight]);
               img.src = window.diffgraph.app.graph.nodes.get(id).imageUrls[0]; })""",
            save,
        )
        # The tiny VAE upsamples less than SD's 8x, so only the shape (square, decoded) is checked here;
        # the prompt that ran carries the typed values.
        assert size[0] == size[1] > 0
        prompt = page.evaluate(
            "() => window.diffgraph.api.getHistory(1).then((h) => Object.values(h)[0].prompt[2])"
        )
        assert prompt[str(latent)]["inputs"]["width"] == 64 and prompt[str(sampler)]["inputs"]["steps"] == 2
        assert prompt[str(pos)]["inputs"]["text"] == "a photo of a cat"
        page.wait_for_timeout(150)
        page.screenshot(path=str(artifacts / "txt2img_result.png"))
        assert errors == []
    finally:
        context.close()
