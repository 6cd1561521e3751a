"""Read-only routes: model lists, embeddings, extensions (listed and served), the plugin report with
import errors, the canvas (or the not-installed page), /system_stats and /free with the real memory
services."""

from __future__ import annotations

import asyncio

from engine.runtime import MODEL_MANAGER, memory_services
from engine.server.config import ServerConfig


def test_models_extensions_plugins_and_static(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)
    (tmp_path / "models" / "checkpoints" / "sub").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "sub" / "tiny.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "checkpoints" / "notes.txt").write_text("not a model")
    (tmp_path / "models" / "embeddings").mkdir(parents=True)
    (tmp_path / "models" / "embeddings" / "easyneg.pt").write_bytes(b"x")
    empty_web = tmp_path / "no_web"
    empty_web.mkdir()

    async def scenario() -> None:
        client = await kit.start_client(runtime, ServerConfig(web_root=empty_web))
        try:
            kinds = await (await client.get("/models")).json()
            assert "checkpoints" in kinds and "loras" in kinds
            assert await (await client.get("/api/models/checkpoints")).json() == ["sub/tiny.safetensors"]
            missing = await client.get("/models/not_a_kind")
            assert missing.status == 404
            assert await (await client.get("/embeddings")).json() == ["easyneg"]

            extensions = await (await client.get("/extensions")).json()
            assert extensions == ["/extensions/webpack/hello.js"]
            served = await client.get(extensions[0])
            assert served.status == 200 and "hello from webpack" in await served.text()
            assert served.content_type == "text/javascript"
            escape = await client.get("/extensions/webpack/..%2F__init__.py")
            assert 400 <= escape.status < 500

            plugins = (await (await client.get("/diffgraph/plugins")).json())["packs"]
            by_name = {p["name"]: p for p in plugins}
            assert by_name["stubpack"]["loaded"] and "StubSlow" in by_name["stubpack"]["nodes"]
            assert by_name["broken_pack"]["loaded"] is False
            assert "needs a library that is not installed" in by_name["broken_pack"]["error"]
            assert (await client.get("/api/diffgraph/plugins")).status == 200

            info = await (await client.get("/object_info/StubSlow")).json()
            assert list(info) == ["StubSlow"] and info["StubSlow"]["input"]["required"]["steps"][0] == "INT"
            assert await (await client.get("/object_info/Nope")).json() == {}

            root = await client.get("/")
            assert root.status == 200 and "not installed" in await root.text()
            stats = await (await client.get("/system_stats")).json()
            assert stats["devices"] == [] and stats["system"]["diffgraph_version"]
        finally:
            await client.close()

    kit.run(scenario)

    web_root = tmp_path / "web"
    (web_root / "js").mkdir(parents=True)
    (web_root / "index.html").write_text("<!doctype html><title>canvas</title>")
    (web_root / "js" / "app.js").write_text("export const x = 1;\n")
    (tmp_path / "outside.txt").write_text("private")

    async def with_canvas() -> None:
        client = await kit.start_client(
            kit.make_runtime(tmp_path / "second"), ServerConfig(web_root=web_root)
        )
        try:
            root = await client.get("/")
            assert root.status == 200 and "<title>canvas</title>" in await root.text()
            script = await client.get("/js/app.js")
            assert script.status == 200 and script.content_type == "text/javascript"
            for path in ("/..%2Foutside.txt", "/js/..%2F..%2Foutside.txt", "/%2e%2e/outside.txt"):
                response = await client.get(path)
                assert 400 <= response.status < 500 and "private" not in await response.text(), path
            assert (await client.get("/nothing.js")).status == 404
        finally:
            await client.close()

    kit.run(with_canvas)


def test_system_stats_and_free_use_the_memory_services(kit, tmp_path):
    import torch

    runtime = kit.make_runtime(tmp_path)
    runtime.services.update(memory_services())
    manager = runtime.services[MODEL_MANAGER]
    layer = torch.nn.Linear(4, 4)
    weights = {k: v.clone() for k, v in layer.state_dict().items()}
    handle = manager.register(layer, name="tiny-linear", loader=lambda: weights)  # noqa: F841 (kept alive)

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            stats = await (await client.get("/system_stats")).json()
            device = stats["devices"][0]
            assert device["type"] == "cpu" and device["vram_total"] > 0
            assert (
                stats["system"]["ram_total"] > 0 and stats["system"]["pytorch_version"] == torch.__version__
            )
            model = next(m for m in stats["models"] if m["name"] == "tiny-linear")
            assert model["location"] != "dropped"
            assert (
                await client.post("/free", json={"unload_models": True, "free_memory": True})
            ).status == 200
            for _ in range(200):
                stats = await (await client.get("/api/system_stats")).json()
                if next(m for m in stats["models"] if m["name"] == "tiny-linear")["location"] == "dropped":
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("POST /free did not release the model's weights")
        finally:
            await client.close()

    kit.run(scenario)


def test_example_workflows_route(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "txt2img.json").write_text('{"nodes": [], "links": []}')
    (tmp_path / "workflows" / "txt2img.api.json").write_text("{}")
    (tmp_path / "secret.json").write_text('{"secret": true}')

    async def scenario() -> None:
        client = await kit.start_client(runtime, ServerConfig())
        try:
            assert await (await client.get("/api/workflows")).json() == ["txt2img.json"]
            document = await (await client.get("/workflows/txt2img.json")).json()
            assert document == {"nodes": [], "links": []}
            for attempt in ("..%2Fsecret.json", "%2E%2E%2Fsecret.json", "nope.json", "txt2img"):
                response = await client.get(f"/workflows/{attempt}")
                assert 400 <= response.status < 500, attempt
        finally:
            await client.close()

    kit.run(scenario)
