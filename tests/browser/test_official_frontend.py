"""ComfyUI's official frontend against a real diffgraph server with a tiny SD1 checkpoint, in Debian's
Chromium, in two versions: the newest (the installed comfyui-frontend-package, or the folder named by
$DIFFGRAPH_FRONTEND_ROOT) and the one ComfyUI 0.3.64 pins (1.27.10: the `static` folder of its unpacked
wheel, named by $DIFFGRAPH_FRONTEND_127; .ci/run downloads it; without it the 1.27 tests skip, or fail
when $DIFFGRAPH_REQUIRE_BROWSER is set, as in CI).

Every request the page makes to this server is recorded; a test fails on any answer 404/405/5xx, except
reads of optional user files the frontend probes for (ComfyUI answers those 404 too, and the frontend
reads 404 as "none"), and on any uncaught page error. It checks: a pack's JavaScript extension
(WEB_DIRECTORY, importing the frontend's app.js) is loaded; the node library lists our nodes, the
checkpoint loader's combo lists the checkpoint; a workflow loaded in the page runs and its image is
fetched; a workflow saved with Ctrl+S lands in the user folder and is listed in the workflows sidebar
after a reload; a setting changed in the page persists; after the reload the assets panel (1.27: the
queue sidebar) lists the run's image (from the persistent history). And the mask editor: a stroke drawn
on a LoadImage's image and saved is uploaded, and LoadImage on the saved file returns it as its MASK.
"""

from __future__ import annotations

import json
import os
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Optional user files the frontend reads on start-up; absent means "none" (ComfyUI: 404 as well).
OPTIONAL_USER_FILES = {
    "/api/userdata/user.css",
    "/api/userdata/comfy.templates.json",
    "/api/userdata/workflows/.index.json",
}
READY = "() => !!(window.app && window.app.graph && window.LiteGraph && window.app.extensionManager)"
PAGE_TIMEOUT_MS = 90_000
MASK_SIZE = 64
# A pack's web extension written the way ComfyUI packs write them (the frontend's /scripts/app.js shim).
PACK_EXTENSION = """import { app } from "../../scripts/app.js";
app.registerExtension({ name: "diffgraph.test.hello", setup() { window.__dgPackExtension = "loaded"; } });
"""
FIRST_SETTINGS = {
    # no welcome/templates dialog over the canvas (what the user's first click stores)
    "Comfy.TutorialCompleted": True,
    # 1.27.x on a fresh profile sets these from another setting's onChange before they are registered
    # and throws (a frontend bug, ComfyUI's server too); stored values equal to the defaults avoid it
    "Comfy.Canvas.LeftMouseClickBehavior": "panning",
    "Comfy.Canvas.MouseWheelScroll": "zoom",
}


# The frontend version ComfyUI 0.3.64 pins in its requirements.txt; .ci/run installs the same one.
PINNED_127 = "1.27.10"
NEWEST, PINNED = "newest", "1.27"


def _frontend_root(version: str) -> Path:
    from engine.server.frontend import FrontEndError, resolve_front_end

    if version == PINNED:
        folder = os.environ.get("DIFFGRAPH_FRONTEND_127")
        message = (
            f"the {PINNED_127} frontend is not available: set DIFFGRAPH_FRONTEND_127 to the 'static' folder of "
            f"an unpacked comfyui_frontend_package-{PINNED_127} wheel (.ci/run does)"
        )
        try:
            if folder:
                return resolve_front_end(folder)
        except FrontEndError as exc:
            message += f" ({exc})"
        if os.environ.get("DIFFGRAPH_REQUIRE_BROWSER"):
            pytest.fail(message + "; CI must run the browser tests against both versions")
        pytest.skip(message)
    try:
        return resolve_front_end(os.environ.get("DIFFGRAPH_FRONTEND_ROOT") or "official")
    except FrontEndError as exc:
        pytest.skip(str(exc))


def _expected_version(version: str) -> str | None:
    """The version string the page must report (None: a folder named by DIFFGRAPH_FRONTEND_ROOT)."""
    if version == PINNED:
        return PINNED_127
    if os.environ.get("DIFFGRAPH_FRONTEND_ROOT"):
        return None
    return metadata.version("comfyui-frontend-package")


@pytest.fixture(scope="module", params=[NEWEST, PINNED])
def official_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from PIL import Image

    from engine.folders import Folders
    from engine.runtime import build_runtime
    from engine.server.app import create_app
    from engine.server.config import ServerConfig
    from tests.browser.conftest import ServerThread
    from tests.factories.checkpoints import write_tiny_checkpoint

    root = _frontend_root(request.param)
    base = tmp_path_factory.mktemp("dg_official")
    (base / "models" / "checkpoints").mkdir(parents=True)
    write_tiny_checkpoint(base / "models" / "checkpoints" / "tiny_sd1.safetensors", "sd1", seed=1)
    pack = base / "custom_nodes" / "dg_web_pack"
    (pack / "web").mkdir(parents=True)
    (pack / "__init__.py").write_text('WEB_DIRECTORY = "./web"\nNODE_CLASS_MAPPINGS = {}\n')
    (pack / "web" / "hello.js").write_text(PACK_EXTENSION)
    folders = Folders.create(base)
    folders.create_directories()
    # an opaque image for the mask editor (written before the page lists the input folder)
    Image.new("RGB", (MASK_SIZE, MASK_SIZE), (200, 120, 40)).save(base / "input" / "photo.png")
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(FIRST_SETTINGS))
    runtime = build_runtime(folders, with_models=True)
    srv = ServerThread(create_app(runtime, ServerConfig(store_path=base / "queue.sqlite3", web_root=root)))
    srv.base = base  # type: ignore[attr-defined]
    srv.frontend = request.param  # type: ignore[attr-defined]
    yield srv
    srv.stop()


class Recorder:
    """Requests to our server that failed, and uncaught page errors."""

    def __init__(self, origin: str):
        self.origin = origin
        self.failures: list[str] = []
        self.page_errors: list[str] = []
        self.paths: list[str] = []

    def response(self, response: Any) -> None:
        if not response.url.startswith(self.origin):
            return
        path = unquote(urlsplit(response.url).path)
        self.paths.append(path)
        status = response.status
        if status in (404, 405) or status >= 500:
            if status == 404 and path in OPTIONAL_USER_FILES:
                return
            self.failures.append(f"{response.request.method} {response.url} -> {status}")

    def check(self) -> None:
        assert not self.page_errors, f"uncaught page errors: {self.page_errors}"
        assert not self.failures, f"requests this server could not answer: {self.failures}"


def _open(browser: Any, srv: Any) -> tuple[Any, Any, Recorder]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    recorder = Recorder(srv.url.rstrip("/"))
    page.on("response", recorder.response)
    page.on(
        "pageerror", lambda e: recorder.page_errors.append("\n".join((e.stack or str(e)).splitlines()[:12]))
    )
    # Nothing leaves the machine: the frontend's calls to comfy.org (release notes) are answered offline.
    context.route(
        lambda url: not url.startswith(srv.url.rstrip("/")), lambda route: route.abort("internetdisconnected")
    )
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(srv.url)
    page.wait_for_function(READY)
    expected = _expected_version(srv.frontend)
    if expected is not None:  # the version under test is the one served, not another one
        assert page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == expected
    return context, page, recorder


def _txt2img_workflow() -> dict[str, Any]:
    """The repository's txt2img example, made tiny: our checkpoint, 64x64, 2 steps."""
    workflow = json.loads((Path(__file__).parents[2] / "workflows" / "txt2img.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"] = ["tiny_sd1.safetensors"]
        elif node["type"] == "EmptyLatentImage":
            node["widgets_values"] = [64, 64, 1]
        elif node["type"] == "KSampler":
            node["widgets_values"][2] = 2
        elif node["type"] == "SaveImage":
            node["widgets_values"] = ["official_fe"]
    return workflow


def _wait(page: Any, predicate: Any, timeout: float, what: str) -> Any:
    """Poll through the page: playwright delivers its events only while we are inside its calls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(250)
    raise AssertionError(f"timed out waiting for {what}")


def _open_node_search(page: Any, artifacts: Path) -> Any:
    """Double-click the empty canvas until the node search box opens. Once in a CI run (1.27.10, a loaded
    machine) the double-click opened nothing for 90 s; each try first closes whatever the page may have
    opened on its own (Escape) and leaves a screenshot when it fails."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    search = page.get_by_role("combobox").first  # the node search box the double-click opens
    for attempt in range(3):
        page.keyboard.press("Escape")
        page.mouse.dblclick(700, 450)
        try:
            search.wait_for(timeout=20_000)
            return search
        except PlaywrightTimeout:
            page.screenshot(path=str(artifacts / f"node_search_attempt_{attempt}.png"))
    raise AssertionError(
        "double-clicking the empty canvas never opened the node search box (screenshots saved)"
    )


def test_official_frontend_runs_saves_and_persists(
    browser: Any, official_server: Any, artifacts: Path
) -> None:
    srv = official_server
    context, page, recorder = _open(browser, srv)
    try:
        # a pack's JavaScript extension (WEB_DIRECTORY) was loaded and set up by the frontend
        page.wait_for_function("() => window.__dgPackExtension === 'loaded'")
        assert "/extensions/dg_web_pack/hello.js" in recorder.paths

        # the node library (the search box) lists our nodes
        types = page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)")
        assert {"KSampler", "CheckpointLoaderSimple", "SaveImage"} <= set(types)
        # the checkpoint loaders' combos list the checkpoint (1.27.x maps model folders to these nodes)
        for node_type in ("CheckpointLoaderSimple", "ImageOnlyCheckpointLoader"):
            choices = page.evaluate(
                "(t) => window.LiteGraph.createNode(t).widgets.find(w => w.name === 'ckpt_name').options.values",
                node_type,
            )
            assert "tiny_sd1.safetensors" in choices, (node_type, choices)
        page.evaluate("() => window.app.graph.clear()")  # the default graph's widgets cover the canvas
        search = _open_node_search(page, artifacts)
        search.fill("KSampler")
        page.get_by_role("option").filter(has_text="KSampler").first.wait_for()
        page.keyboard.press("Escape")

        # load a workflow, queue it with the Run button: the image is fetched from /view
        views: list[dict[str, list[str]]] = []
        page.on(
            "response",
            lambda r: (
                views.append(parse_qs(urlsplit(r.url).query))
                if urlsplit(r.url).path.endswith("/view") and r.status == 200
                else None
            ),
        )
        page.evaluate("(w) => window.app.loadGraphData(w)", _txt2img_workflow())
        page.get_by_role("button", name="Run", exact=True).first.click()
        _wait(
            page,
            lambda: any(
                v.get("type") == ["output"] and v["filename"][0].startswith("official_fe") for v in views
            ),
            120,
            "the output image",
        )
        assert list((srv.base / "output").glob("official_fe*.png"))
        page.screenshot(path=str(artifacts / "official_frontend_run.png"))

        # Ctrl+S on the unsaved workflow asks for a name and stores it through /api/userdata
        page.mouse.click(700, 600)
        page.keyboard.press("Control+s")
        name_box = page.locator("input:focus")
        name_box.wait_for()
        name_box.fill("tiny txt2img")
        name_box.press("Enter")
        saved = srv.base / "user" / "default" / "workflows" / "tiny txt2img.json"
        _wait(page, saved.is_file, 20, "the saved workflow file")
        assert any(n["type"] == "KSampler" for n in json.loads(saved.read_text())["nodes"])

        # a setting changed in the page is stored on the server
        page.evaluate("() => window.app.extensionManager.setting.set('Comfy.Graph.ZoomSpeed', 1.3)")
        settings_file = srv.base / "user" / "default" / "comfy.settings.json"
        _wait(
            page,
            lambda: json.loads(settings_file.read_text()).get("Comfy.Graph.ZoomSpeed") == 1.3,
            20,
            "the setting",
        )

        # reload: the setting persisted, the workflow is listed in the workflows sidebar
        page.reload()
        page.wait_for_function(READY)
        zoom = page.evaluate("() => window.app.extensionManager.setting.get('Comfy.Graph.ZoomSpeed')")
        assert zoom == 1.3
        page.locator('button[aria-label^="Workflows"]').first.click()
        page.locator(".comfyui-workflows-browse [role=treeitem]", has_text="tiny txt2img").first.wait_for()
        if srv.frontend == PINNED:
            # 1.27.x lists past runs, with their images, in the queue sidebar (from /history)
            page.locator('button[aria-label^="Queue"]').first.click()
            page.locator('img[src*="official_fe_00001_"]').first.wait_for()
        else:
            # the assets panel lists the earlier run's image (from /api/jobs over the persistent history)
            page.locator('button[aria-label^="Assets"]').first.click()
            page.get_by_text("official_fe_00001_").first.wait_for()
        page.screenshot(path=str(artifacts / "official_frontend_workflows.png"))
        recorder.check()
    finally:
        context.close()


def _settled_box(page: Any, last: dict[str, float]) -> dict[str, float] | None:
    """The topmost image-sized canvas's box when it equals the one measured before (else None)."""
    box = page.evaluate(
        """(n) => { const cs = [...document.querySelectorAll('canvas')]
                      .filter(c => c.offsetParent && c.width === n && c.height === n);
                    const r = cs[cs.length - 1].getBoundingClientRect();
                    return {x: r.x, y: r.y, w: r.width, h: r.height}; }""",
        MASK_SIZE,
    )
    settled = box == last
    last.clear()
    last.update(box)
    return box if settled else None


def _draw_mask_stroke(page: Any) -> tuple[int, range]:
    """Open the mask editor on the selected LoadImage, draw a horizontal stroke across its image's
    middle row (from 20% to 60% of the width) and save. Returns (row, columns) in image pixels."""
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.MaskEditor.OpenMaskEditor')")
    save = page.locator("button:visible", has_text=re.compile(r"^\s*Save\s*$"))
    save.wait_for()
    # the editor's canvases are the image's size; it is ready to draw once the image is painted on the
    # lowest one, its image layer (strokes drawn while it still loads the image are lost)
    page.wait_for_function(
        """(n) => { const c = [...document.querySelectorAll('canvas')]
                      .find(c => c.offsetParent && c.width === n && c.height === n);
                    const ctx = c && c.getContext('2d');
                    return !!ctx && ctx.getImageData(n / 2, n / 2, 1, 1).data[3] === 255; }""",
        arg=MASK_SIZE,
    )
    # the dialog opens with an animation: draw once the canvas stopped moving
    last: dict[str, float] = {}
    box = _wait(page, lambda: _settled_box(page, last), 10, "the mask editor's canvas to settle")
    y = box["y"] + box["h"] * 0.5
    page.mouse.move(box["x"] + box["w"] * 0.2, y)
    page.mouse.down()
    for step in range(21):
        page.mouse.move(box["x"] + box["w"] * (0.2 + 0.4 * step / 20), y)
    page.mouse.up()
    save.click()
    save.wait_for(state="hidden")
    return MASK_SIZE // 2, range(int(MASK_SIZE * 0.25), int(MASK_SIZE * 0.55))


def test_mask_editor_saves_a_mask_load_image_returns(browser: Any, official_server: Any) -> None:
    """Open photo.png in a LoadImage node, draw a stroke in the mask editor, save; the uploads succeed
    (1.27.x posts the mask layers to /upload/mask, newer versions every layer to /upload/image) and a
    workflow run in the page with LoadImage on the saved file gives a MASK that is 1 under the stroke."""
    import numpy as np
    from PIL import Image

    srv = official_server
    context, page, recorder = _open(browser, srv)
    uploads: list[tuple[str, int]] = []
    shown: list[str] = []
    page.on("response", lambda r: shown.append(r.url) if "/view" in r.url and r.status == 200 else None)
    page.on(
        "response",
        lambda r: (
            uploads.append((urlsplit(r.url).path, r.status)) if "/upload/" in urlsplit(r.url).path else None
        ),
    )
    try:
        page.evaluate(
            """() => { const g = window.app.graph; g.clear();
                 const load = window.LiteGraph.createNode('LoadImage'); load.pos = [100, 100]; g.add(load);
                 const w = load.widgets.find(w => w.name === 'image'); w.value = 'photo.png'; w.callback?.('photo.png');
                 const toImage = window.LiteGraph.createNode('MaskToImage'); toImage.pos = [450, 100]; g.add(toImage);
                 const save = window.LiteGraph.createNode('SaveImage'); save.pos = [700, 100]; g.add(save);
                 save.widgets.find(w => w.name === 'filename_prefix').value = 'mask_check';
                 load.connect(1, toImage, 0); toImage.connect(0, save, 0);
                 window.__dgLoad = load; }"""
        )
        page.wait_for_function("() => window.__dgLoad.imgs && window.__dgLoad.imgs.length > 0")
        page.evaluate("() => window.app.canvas.selectNode(window.__dgLoad)")
        row, columns = _draw_mask_stroke(page)
        _wait(page, lambda: len(uploads) >= 4, 20, "the mask editor's uploads")
        # the saved file replaces photo.png in the node's widget, as an annotated name
        value = _wait(
            page,
            lambda: page.evaluate(
                "() => { const v = window.__dgLoad.widgets.find(w => w.name === 'image').value;"
                " return v !== 'photo.png' && v; }"
            ),
            20,
            "the saved mask in the LoadImage widget",
        )
        assert value.endswith(" [input]") and "clipspace-painted-masked-" in value, value
        assert all(status == 200 for _, status in uploads), uploads
        if srv.frontend == PINNED:
            assert any(path.endswith("/upload/mask") for path, _ in uploads), uploads
        assert (srv.base / "input" / value.removesuffix(" [input]")).is_file()

        page.get_by_role("button", name="Run", exact=True).first.click()
        # the page fetches the saved image once the run has finished (the file is complete by then)
        _wait(page, lambda: any("mask_check" in path for path in shown), 60, "the mask run's image")
        mask = (
            np.asarray(Image.open(next((srv.base / "output").glob("mask_check*.png"))).convert("L")) / 255.0
        )
        assert mask.shape == (MASK_SIZE, MASK_SIZE)
        assert (mask[row, columns.start : columns.stop] > 0.5).all(), mask[row]
        # nothing was drawn near the top and bottom edges
        assert mask[:4].max() == 0 and mask[-4:].max() == 0
        recorder.check()
    finally:
        context.close()
