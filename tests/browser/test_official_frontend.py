"""ComfyUI's official frontend (the installed comfyui-frontend-package, or the folder named by
$DIFFGRAPH_FRONTEND_ROOT, e.g. an unpacked 1.27.x wheel's `static`) against a real diffgraph server with a
tiny SD1 checkpoint, in Debian's Chromium.

Every request the page makes to this server is recorded; the test fails on any answer 404/405/5xx, except
reads of optional user files the frontend probes for (ComfyUI answers those 404 too, and the frontend
reads 404 as "none"), and on any uncaught page error. It checks: a pack's JavaScript extension
(WEB_DIRECTORY, importing the frontend's app.js) is loaded; the node library lists our nodes; a
workflow loaded in the page runs and its image is fetched; a workflow saved with Ctrl+S lands in the user
folder and is listed in the workflows sidebar after a reload; a setting changed in the page persists;
after the reload the assets panel lists the run's image (the jobs API over the persistent history).
"""

from __future__ import annotations

import json
import os
import time
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


def _frontend_root() -> Path:
    from engine.server.frontend import FrontEndError, resolve_front_end

    try:
        return resolve_front_end(os.environ.get("DIFFGRAPH_FRONTEND_ROOT") or "official")
    except FrontEndError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def official_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from engine.folders import Folders
    from engine.runtime import build_runtime
    from engine.server.app import create_app
    from engine.server.config import ServerConfig
    from tests.browser.conftest import ServerThread
    from tests.factories.checkpoints import write_tiny_checkpoint

    root = _frontend_root()
    base = tmp_path_factory.mktemp("dg_official")
    (base / "models" / "checkpoints").mkdir(parents=True)
    write_tiny_checkpoint(base / "models" / "checkpoints" / "tiny_sd1.safetensors", "sd1", seed=1)
    pack = base / "custom_nodes" / "dg_web_pack"
    (pack / "web").mkdir(parents=True)
    (pack / "__init__.py").write_text('WEB_DIRECTORY = "./web"\nNODE_CLASS_MAPPINGS = {}\n')
    (pack / "web" / "hello.js").write_text(PACK_EXTENSION)
    folders = Folders.create(base)
    folders.create_directories()
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(FIRST_SETTINGS))
    runtime = build_runtime(folders, with_models=True)
    srv = ServerThread(create_app(runtime, ServerConfig(store_path=base / "queue.sqlite3", web_root=root)))
    srv.base = base  # type: ignore[attr-defined]
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
        page.evaluate("() => window.app.graph.clear()")  # the default graph's widgets cover the canvas
        page.mouse.dblclick(700, 450)
        search = page.get_by_role("combobox").first  # the node search box the double-click opens
        search.wait_for()
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
        page.get_by_text("tiny txt2img").first.wait_for()
        # the assets panel lists the earlier run's image (from /api/jobs over the persistent history)
        page.locator('button[aria-label^="Assets"]').first.click()
        page.get_by_text("official_fe_00001_").first.wait_for()
        page.screenshot(path=str(artifacts / "official_frontend_workflows.png"))
        recorder.check()
    finally:
        context.close()
