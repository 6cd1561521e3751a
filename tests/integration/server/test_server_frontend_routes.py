"""The routes and messages the official frontend uses besides user files, with ComfyUI's shapes:
features and the WebSocket feature_flags exchange, progress_state, the jobs API over the persistent queue
and history, i18n / workflow templates / subgraph blueprints from packs, templates without the optional
package, model folders and metadata, /internal/*, and the served frontend's own extensions."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid

import pytest

from engine.server.config import ServerConfig


def _pack_extras(tmp_path) -> None:
    """Locales, example workflows and a subgraph blueprint in the stub pack (ComfyUI's layout)."""
    pack = tmp_path / "custom_nodes" / "stubpack"
    (pack / "locales" / "en").mkdir(parents=True, exist_ok=True)
    (pack / "locales" / "en" / "main.json").write_text(json.dumps({"title": "Stub"}))
    (pack / "locales" / "en" / "nodeDefs.json").write_text(
        json.dumps({"StubConst": {"display_name": "Const"}})
    )
    (pack / "locales" / "fr").mkdir(parents=True, exist_ok=True)
    (pack / "locales" / "fr" / "main.json").write_text("{broken")
    (pack / "example_workflows").mkdir(exist_ok=True)
    (pack / "example_workflows" / "demo.json").write_text(json.dumps({"nodes": []}))
    (pack / "subgraphs").mkdir(exist_ok=True)
    (pack / "subgraphs" / "blur.json").write_text(json.dumps({"definitions": {}}))


def _safetensors(path, metadata) -> None:
    header = json.dumps({"__metadata__": metadata} if metadata is not None else {}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def test_pack_and_model_routes(kit, tmp_path):
    _pack_extras(tmp_path)
    runtime = kit.make_runtime(tmp_path)
    checkpoints = tmp_path / "models" / "checkpoints"
    (checkpoints / "sub").mkdir(parents=True)
    _safetensors(checkpoints / "sub" / "tiny.safetensors", {"modelspec.title": "Tiny"})
    _safetensors(checkpoints / "bare.safetensors", None)
    (checkpoints / "notes.txt").write_text("not a model")

    async def scenario() -> None:
        client = await kit.start_client(runtime, ServerConfig(max_upload_bytes=5 * 1024**2))
        try:
            features = await (await client.get("/api/features")).json()
            assert features["max_upload_size"] == 5 * 1024**2
            assert features["supports_preview_metadata"] is False and features["assets"] is False

            i18n = await (await client.get("/api/i18n")).json()
            assert i18n == {"en": {"title": "Stub", "nodeDefs": {"StubConst": {"display_name": "Const"}}}}

            assert await (await client.get("/api/workflow_templates")).json() == {"stubpack": ["demo"]}
            demo = await client.get("/api/workflow_templates/stubpack/demo.json")
            assert demo.status == 200 and json.loads(await demo.text()) == {"nodes": []}
            escape = await client.get("/api/workflow_templates/stubpack/..%2F__init__.py")
            assert 400 <= escape.status < 500

            blueprints = await (await client.get("/api/global_subgraphs")).json()
            ((blueprint_id, entry),) = blueprints.items()
            assert (
                entry["name"] == "blur" and entry["info"] == {"node_pack": "stubpack"} and "data" not in entry
            )
            full = await (await client.get(f"/api/global_subgraphs/{blueprint_id}")).json()
            assert json.loads(full["data"]) == {"definitions": {}}
            assert (await client.get("/api/global_subgraphs/nope")).status == 404

            folders = await (await client.get("/api/experiment/models")).json()
            names = [f["name"] for f in folders]
            assert "checkpoints" in names and "custom_nodes" not in names
            assert next(f for f in folders if f["name"] == "checkpoints")["folders"] == [str(checkpoints)]
            files = await (await client.get("/api/experiment/models/checkpoints")).json()
            assert [(f["name"], f["pathIndex"]) for f in files] == [
                ("bare.safetensors", 0),
                ("sub/tiny.safetensors", 0),
            ]
            assert {"modified", "created", "size"} <= set(files[0])
            assert (await client.get("/api/experiment/models/nothing")).status == 404

            meta = await client.get("/api/view_metadata/checkpoints?filename=sub/tiny.safetensors")
            assert await meta.json() == {"modelspec.title": "Tiny"}
            for query in ("filename=bare.safetensors", "filename=notes.txt", "filename=../../x.safetensors"):
                assert (await client.get(f"/api/view_metadata/checkpoints?{query}")).status in (400, 404)

            paths = await (await client.get("/internal/folder_paths")).json()
            assert paths["checkpoints"] == [str(checkpoints)] and "custom_nodes" in paths
            (tmp_path / "output" / "old.png").write_bytes(b"x")
            (tmp_path / "output" / "new.png").write_bytes(b"x")
            import os

            os.utime(tmp_path / "output" / "old.png", (1, 1))
            assert await (await client.get("/internal/files/output")).json() == ["new.png", "old.png"]
            assert (await client.get("/internal/files/models")).status == 400
        finally:
            await client.close()

    kit.run(scenario)


def test_templates_without_the_package_and_frontend_extensions(kit, tmp_path, monkeypatch):
    from engine.server import routes_frontend

    monkeypatch.setattr(routes_frontend, "templates_roots", lambda: [])  # as without the optional packages
    web_root = tmp_path / "frontend"
    (web_root / "extensions" / "core").mkdir(parents=True)
    (web_root / "index.html").write_text("<!doctype html><title>frontend</title>")
    (web_root / "extensions" / "core" / "widgets.js").write_text("export const core = 1;\n")
    runtime = kit.make_runtime(tmp_path)

    async def scenario() -> None:
        client = await kit.start_client(runtime, ServerConfig(web_root=web_root))
        try:
            index = await client.get("/templates/index.json")
            assert index.status == 200 and await index.json() == []
            assert await (await client.get("/templates/index.fr.json")).json() == []
            assert (await client.get("/templates/some_template.json")).status == 404
            # the UI's own extensions are listed and served next to the packs'
            listed = await (await client.get("/api/extensions")).json()
            assert listed == ["/extensions/core/widgets.js", "/extensions/webpack/hello.js"]
            core = await client.get("/extensions/core/widgets.js")
            assert core.status == 200 and core.content_type == "text/javascript"
            assert (await client.get("/extensions/core/..%2F..%2Findex.html")).status in (400, 403, 404)
            css = await client.get("/user.css")
            assert css.status == 200 and css.content_type == "text/css"
            (tmp_path / "user" / "default" / "user.css").write_text("body { color: red }")
            assert "color: red" in await (await client.get("/user.css")).text()
        finally:
            await client.close()

    kit.run(scenario)


def test_feature_flags_exchange_and_progress_state(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)

    async def scenario() -> None:
        client = await kit.start_client(runtime, ServerConfig(max_upload_bytes=7 * 1024**2))
        try:
            ws = await client.ws_connect("/ws?clientId=fe")
            assert (await ws.receive_json(timeout=5))["type"] == "status"
            await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            answer = await ws.receive_json(timeout=5)
            assert answer["type"] == "feature_flags" and answer["data"]["max_upload_size"] == 7 * 1024**2
            await ws.send_json({"type": "feature_flags", "data": {}})  # only the first message negotiates

            prompt_id = str(uuid.uuid4())
            posted = await client.post(
                "/prompt",
                json={"prompt": kit.save_prompt(3, steps=2), "client_id": "fe", "prompt_id": prompt_id},
            )
            assert posted.status == 200
            messages = await kit.collect_until_done(ws, prompt_id)
            assert not any(isinstance(m, dict) and m["type"] == "feature_flags" for m in messages)
            states = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "progress_state"]
            assert all(s["prompt_id"] == prompt_id for s in states)
            # node 2 is seen running with its progress, then every node finished
            running = [s["nodes"]["2"] for s in states if s["nodes"].get("2", {}).get("state") == "running"]
            assert [(r["value"], r["max"]) for r in running] == [(0, 1), (1, 2), (2, 2)]
            last = states[-1]["nodes"]
            assert {k: v["state"] for k, v in last.items()} == {
                "1": "finished",
                "2": "finished",
                "3": "finished",
            }
            assert last["2"]["node_id"] == "2" and last["2"]["display_node_id"] == "2"
            await ws.close()
        finally:
            await client.close()

    kit.run(scenario)


def test_jobs_api_over_queue_and_history(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)

    async def scenario() -> None:
        client = await kit.start_client(runtime, ServerConfig(store_path=tmp_path / "q.sqlite3"))
        try:
            done_id, failed_id, running_id, pending_id = await _four_jobs(kit, client)
            await _check_listing(client, done_id, failed_id, running_id, pending_id)
            await _check_detail_and_cancel(kit, client, done_id, running_id, pending_id)
        finally:
            await client.close()

    kit.run(scenario)


async def _four_jobs(kit, client):
    """A finished job (with a workflow id), a failed one, a running one and a pending one."""
    done_id, failed_id = str(uuid.uuid4()), str(uuid.uuid4())
    workflow = {"extra_pnginfo": {"workflow": {"id": "wf-1"}}}
    await client.post(
        "/prompt",
        json={"prompt": kit.save_prompt(1, steps=1), "prompt_id": done_id, "extra_data": workflow},
    )
    failing = {
        "1": {"class_type": "StubConst", "inputs": {"value": 3}},
        "2": {"class_type": "StubFail", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "StubSink", "inputs": {"value": ["2", 0]}},
    }
    await client.post("/prompt", json={"prompt": failing, "prompt_id": failed_id})
    await kit.wait_history(client, failed_id)
    await kit.wait_history(client, done_id)
    # a long one runs, another waits behind it
    running_id, pending_id = str(uuid.uuid4()), str(uuid.uuid4())
    for pid in (running_id, pending_id):
        slow = kit.save_prompt(2, steps=100000)
        slow["2"]["inputs"]["delay"] = 0.01
        await client.post("/prompt", json={"prompt": slow, "prompt_id": pid})
    # Wait (generously: CI machines are loaded) until the first slow prompt is the running one.
    for _ in range(3000):
        running = (await (await client.get("/queue")).json())["queue_running"]
        if running and running[0][1] == running_id:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError(f"{running_id} never started running")
    return done_id, failed_id, running_id, pending_id


async def _check_listing(client, done_id, failed_id, running_id, pending_id):
    body = await (await client.get("/api/jobs?status=in_progress,pending&limit=200&offset=0")).json()
    assert [(j["id"], j["status"]) for j in body["jobs"]] == [
        (pending_id, "pending"),
        (running_id, "in_progress"),
    ]
    assert body["pagination"] == {"offset": 0, "limit": 200, "total": 2, "has_more": False}

    history = await (await client.get("/api/jobs?status=completed,failed,cancelled&limit=1")).json()
    assert history["pagination"]["total"] == 2 and history["pagination"]["has_more"] is True
    assert [j["id"] for j in history["jobs"]] == [failed_id]  # newest first
    everything = await (await client.get("/api/jobs?sort_order=asc")).json()
    assert [j["id"] for j in everything["jobs"]] == [done_id, failed_id, running_id, pending_id]
    done = everything["jobs"][0]
    assert done["status"] == "completed" and done["outputs_count"] == 1 and done["workflow_id"] == "wf-1"
    assert done["preview_output"]["filename"] == "stub_00001_.png" and done["preview_output"]["nodeId"] == "3"
    assert done["execution_end_time"] >= done["execution_start_time"] >= done["create_time"] > 0
    assert everything["jobs"][1]["status"] == "failed"
    assert everything["jobs"][1]["execution_error"]["node_id"] == "2"
    assert [j["id"] for j in (await (await client.get("/api/jobs?workflow_id=wf-1")).json())["jobs"]] == [
        done_id
    ]
    for bad in ("status=weird", "limit=0", "limit=x", "sort_by=name", "sort_order=up"):
        assert (await client.get(f"/api/jobs?{bad}")).status == 400, bad


async def _check_detail_and_cancel(kit, client, done_id, running_id, pending_id):
    detail = await (await client.get(f"/api/jobs/{done_id}")).json()
    assert detail["outputs"]["3"]["images"][0]["filename"] == "stub_00001_.png"
    assert detail["workflow"]["prompt"]["1"]["class_type"] == "StubConst"
    assert detail["execution_status"]["status_str"] == "success"
    assert (await (await client.get(f"/api/jobs/{pending_id}")).json())["status"] == "pending"
    assert (await client.get("/api/jobs/unknown")).status == 404

    # cancel: the pending one is dequeued, the running one interrupted (then recorded cancelled)
    assert await (await client.post(f"/api/jobs/{pending_id}/cancel")).json() == {"cancelled": True}
    assert await (await client.post(f"/api/jobs/{done_id}/cancel")).json() == {"cancelled": False}
    batch = await client.post("/api/jobs/cancel", json={"job_ids": [running_id, "unknown"]})
    assert await batch.json() == {"cancelled": True}
    assert (await client.post("/api/jobs/cancel", json={"job_ids": [1]})).status == 400
    await kit.wait_history(client, running_id)
    cancelled = await (await client.get(f"/api/jobs/{running_id}")).json()
    assert cancelled["status"] == "cancelled"
    assert (await client.get(f"/api/jobs/{pending_id}")).status == 404


@pytest.mark.parametrize("choice", ["official", "builtin"])
def test_front_end_choice(choice, tmp_path):
    from engine.server.config import default_web_root
    from engine.server.frontend import official_frontend_root, resolve_front_end

    if choice == "official" and official_frontend_root() is None:
        pytest.skip("comfyui-frontend-package is not installed")
    root = resolve_front_end(choice)
    assert (root / "index.html").is_file()
    assert root == (default_web_root() if choice == "builtin" else official_frontend_root())


def test_front_end_folder_and_clear_errors(tmp_path, monkeypatch, capsys):
    from engine import cli
    from engine.server import frontend

    (tmp_path / "ui").mkdir()
    (tmp_path / "ui" / "index.html").write_text("<!doctype html>")
    assert frontend.resolve_front_end(str(tmp_path / "ui")) == (tmp_path / "ui").resolve()
    with pytest.raises(frontend.FrontEndError, match="folder holding index.html"):
        frontend.resolve_front_end(str(tmp_path))
    monkeypatch.setattr(frontend, "official_frontend_root", lambda: None)
    # `diffgraph serve` stops at once with the fix in the message (before loading any model)
    assert cli.main(["serve", "--base-directory", str(tmp_path), "--port", "1"]) != 0
    message = capsys.readouterr().err
    assert "pip install comfyui-frontend-package" in message and "--front-end builtin" in message


def test_internal_logs_hold_the_servers_log_lines_without_access_lines(kit, tmp_path):
    import logging

    runtime = kit.make_runtime(tmp_path)
    # Servers other tests keep running (a session-wide browser server) have buffers of their own.
    handlers_before = set(logging.getLogger("diffgraph").handlers)

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            assert len(set(logging.getLogger("diffgraph").handlers) - handlers_before) == 1
            logging.getLogger("diffgraph.server.queue").warning("disk almost full")
            logging.getLogger("diffgraph.server.access").warning("GET /internal/logs")
            text = await (await client.get("/internal/logs")).json()
            assert "disk almost full" in text and "GET /internal/logs" not in text
            raw = await (await client.get("/internal/logs/raw")).json()
            assert raw["entries"][-1]["m"].endswith("disk almost full\n") and raw["entries"][-1]["t"]
            assert set(raw["size"]) == {"cols", "rows"}
            origin = f"http://{client.host}:{client.port}"
            subscribed = await client.patch(
                "/internal/logs/subscribe",
                json={"clientId": "x", "enabled": True},
                headers={"Origin": origin},
            )
            assert subscribed.status == 200
        finally:
            await client.close()

    kit.run(scenario)
    # the buffer stops listening with the app
    assert set(logging.getLogger("diffgraph").handlers) <= handlers_before


def test_templates_from_the_split_packages(kit, tmp_path, monkeypatch):
    """Newer comfyui-workflow-templates releases: indexes and workflows in one package, images in media
    bundles, each with a flat templates/ folder; a file is served from whichever has it. (The test extra
    installs the older single package 0.1.95 for tests/integration/test_comfyui_templates.py; it is left out
    of the lookup here, as a newer install does not have it.)"""
    import importlib

    from engine.server import frontend

    split_only = tuple(m for m in frontend.TEMPLATE_PACKAGES if m != "comfyui_workflow_templates")
    monkeypatch.setattr(frontend, "TEMPLATE_PACKAGES", split_only)

    site = tmp_path / "site"
    for package, files in {
        "comfyui_workflow_templates_json": {"index.json": '[{"moduleName": "default"}]', "flux.json": "{}"},
        "comfyui_workflow_templates_media_image": {"flux-1.webp": "RIFF"},
    }.items():
        (site / package / "templates").mkdir(parents=True)
        (site / package / "__init__.py").write_text("")
        for name, text in files.items():
            (site / package / "templates" / name).write_text(text)
    (site / "secret.txt").write_text("private")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    runtime = kit.make_runtime(tmp_path)

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            assert await (await client.get("/templates/index.json")).json() == [{"moduleName": "default"}]
            assert (await client.get("/templates/flux.json")).status == 200
            image = await client.get("/templates/flux-1.webp")
            assert image.status == 200 and await image.text() == "RIFF"
            assert (await client.get("/templates/index.fr.json")).status == 404  # the frontend falls back
            for attack in ("..%2F..%2Fsecret.txt", "%2e%2e/%2e%2e/secret.txt"):
                refused = await client.get(f"/templates/{attack}")
                assert 400 <= refused.status < 500 and "private" not in await refused.text()
        finally:
            await client.close()

    kit.run(scenario)
