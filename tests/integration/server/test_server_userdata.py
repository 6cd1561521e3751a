"""The official frontend's user routes (`/userdata`, `/v2/userdata`, `/users`, `/settings`) with ComfyUI's
shapes, against the real app; names that try to leave the user folder are refused."""

from __future__ import annotations

import json
import os

import pytest

from engine.server.config import ServerConfig


def _headers(client, **extra):
    """What the official frontend sends: its own origin, a Comfy-User header, a text/plain body."""
    origin = f"http://{client.host}:{client.port}"
    return {"Origin": origin, "Comfy-User": "", "Content-Type": "text/plain;charset=UTF-8", **extra}


def test_userdata_write_list_read_move_delete(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)
    user_root = tmp_path / "user" / "default"

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            # a fresh install: the folders the frontend lists exist, so it gets [] and not 404
            listing = await client.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true")
            assert listing.status == 200 and await listing.json() == []
            body = json.dumps({"nodes": [], "links": []})
            saved = await client.post(
                "/api/userdata/workflows%2Fa%20b.json?overwrite=true&full_info=false",
                data=body,
                headers=_headers(client),
            )
            assert saved.status == 200 and await saved.json() == "workflows/a b.json"
            assert (user_root / "workflows" / "a b.json").read_text() == body
            again = await client.post(
                "/api/userdata/workflows%2Fa%20b.json?overwrite=false", data="x", headers=_headers(client)
            )
            assert again.status == 409 and (user_root / "workflows" / "a b.json").read_text() == body
            nested = await client.post(
                "/api/userdata/workflows%2Fsub%2Fc.json?full_info=true", data="{}", headers=_headers(client)
            )
            info = await nested.json()
            assert info["path"] == "workflows/sub/c.json" and info["size"] == 2
            assert isinstance(info["modified"], float) and "created" in info
            (user_root / "workflows" / ".hidden.json").write_text("{}")

            async def listed(query: str):
                return await (await client.get(f"/userdata?dir=workflows{query}")).json()

            assert await listed("") == ["a b.json"]
            assert await listed("&recurse=true") == ["a b.json", "sub/c.json"]
            assert await listed("&recurse=true&split=true") == [
                ["a b.json", "a b.json"],
                ["sub/c.json", "sub", "c.json"],
            ]
            full = await listed("&recurse=true&full_info=true")
            assert [e["path"] for e in full] == ["a b.json", "sub/c.json"]
            assert full[0]["size"] == len(body)
            assert (await client.get("/userdata")).status == 400
            assert (await client.get("/userdata?dir=nothing")).status == 404

            read = await client.get("/api/userdata/workflows%2Fa%20b.json")
            assert read.status == 200 and await read.text() == body
            assert read.headers["X-Content-Type-Options"] == "nosniff"
            assert (await client.get("/api/userdata/workflows%2Fmissing.json")).status == 404

            moved = await client.post(
                "/api/userdata/workflows%2Fa%20b.json/move/workflows%2Fsub%2Fc.json?overwrite=false",
                headers=_headers(client),
            )
            assert moved.status == 409
            moved = await client.post(
                "/api/userdata/workflows%2Fa%20b.json/move/workflows%2Fd.json?full_info=true",
                headers=_headers(client),
            )
            assert moved.status == 200 and (await moved.json())["path"] == "workflows/d.json"
            assert not (user_root / "workflows" / "a b.json").exists()
            missing = await client.post("/api/userdata/nope.json/move/x.json", headers=_headers(client))
            assert missing.status == 404
        finally:
            await client.close()

    kit.run(scenario)


def test_userdata_v2_listing_and_delete(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)
    user_root = tmp_path / "user" / "default"

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            (user_root / "workflows" / "sub").mkdir(parents=True)
            (user_root / "workflows" / "sub" / "c.json").write_text("{}")
            (user_root / "workflows" / "d.json").write_text("[]")
            v2 = await (await client.get("/api/v2/userdata?path=workflows")).json()
            assert [(e["name"], e["type"]) for e in v2] == [
                ("sub", "directory"),
                ("c.json", "file"),
                ("d.json", "file"),
            ]
            assert v2[1]["path"] == "workflows/sub/c.json" and v2[1]["size"] == 2

            deleted = await client.delete("/api/userdata/workflows%2Fd.json", headers=_headers(client))
            assert deleted.status == 204 and not (user_root / "workflows" / "d.json").exists()
            assert (
                await client.delete("/api/userdata/workflows%2Fd.json", headers=_headers(client))
            ).status == 404
        finally:
            await client.close()

    kit.run(scenario)


TRAVERSALS = [
    "..%2F..%2Fdiffgraph_queue.sqlite3",  # the queue file next to the user folder
    "..%2Fsecret.txt",
    "workflows%2F..%2F..%2Fsecret.txt",
    "%252e%252e%252fsecret.txt",  # double-encoded
    "%2Fetc%2Fpasswd",
    "workflows%5C..%5C..%5Csecret.txt",
    "a%00b.json",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_userdata_names_cannot_leave_the_user_folder(kit, tmp_path, name):
    runtime = kit.make_runtime(tmp_path)
    (tmp_path / "user" / "secret.txt").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "user" / "secret.txt").write_text("private")

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            # the routes exist (a 404 for a missing route would pass the refusals below on its own)
            assert (await client.get("/api/userdata?dir=workflows")).status == 200
            read = await client.get(f"/api/userdata/{name}")
            assert 400 <= read.status < 500 and "private" not in await read.text()
            write = await client.post(f"/api/userdata/{name}", data="owned", headers=_headers(client))
            assert 400 <= write.status < 500
            move = await client.post(f"/api/userdata/{name}/move/x.json", headers=_headers(client))
            assert 400 <= move.status < 500
            move_out = await client.post(
                "/api/userdata/comfy.settings.json/move/" + name, headers=_headers(client)
            )
            assert 400 <= move_out.status < 500
            listing = await client.get(f"/api/userdata?dir={name}")
            assert 400 <= listing.status < 500
            assert (await client.delete(f"/api/userdata/{name}", headers=_headers(client))).status >= 400
        finally:
            await client.close()

    kit.run(scenario)
    assert (tmp_path / "user" / "secret.txt").read_text() == "private"
    assert not any(
        p.read_text() == "owned" for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".sqlite3"
    )


def test_userdata_symlinks_out_of_the_user_folder_are_refused(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text("private")
    user_root = tmp_path / "user" / "default"

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            os.symlink(outside, user_root / "workflows" / "linked")
            os.symlink(outside / "secret.json", user_root / "workflows" / "file.json")
            assert (await client.get("/api/userdata/workflows%2Flinked%2Fsecret.json")).status == 403
            assert (await client.get("/api/userdata/workflows%2Ffile.json")).status == 403
            written = await client.post(
                "/api/userdata/workflows%2Flinked%2Fnew.json", data="x", headers=_headers(client)
            )
            assert written.status == 403 and not (outside / "new.json").exists()
            listing = await (await client.get("/api/userdata?dir=workflows&recurse=true")).json()
            assert listing == []  # the links' targets are outside: not listed
            assert (await client.get("/api/userdata?dir=workflows%2Flinked")).status == 403
        finally:
            await client.close()

    kit.run(scenario)


def test_cross_site_and_form_bodies_are_refused(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)

    async def scenario() -> None:
        client = await kit.start_client(runtime)
        try:
            evil = await client.post(
                "/api/userdata/workflows%2Fx.json",
                data="x",
                headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
            )
            assert evil.status == 403
            # a browser body a cross-site form could send (no Comfy-User header, which needs a pre-flight)
            form = await client.post(
                "/api/settings/Comfy.X",
                data="1",
                headers={
                    "Content-Type": "text/plain",
                    "User-Agent": "Mozilla/5.0",
                    "Sec-Fetch-Site": "same-origin",
                },
            )
            assert form.status == 415
            assert not (tmp_path / "user" / "default" / "workflows" / "x.json").exists()
        finally:
            await client.close()

    kit.run(scenario)


def test_settings_and_users_persist_across_restarts(kit, tmp_path):
    runtime = kit.make_runtime(tmp_path)
    settings_file = tmp_path / "user" / "default" / "comfy.settings.json"

    async def first() -> None:
        client = await kit.start_client(runtime, ServerConfig(store_path=tmp_path / "q.sqlite3"))
        try:
            assert await (await client.get("/api/users")).json() == {"storage": "server", "migrated": True}
            assert (await client.post("/api/users", json={"username": "x"})).status == 400
            assert await (await client.get("/api/settings")).json() == {}
            assert await (await client.get("/api/settings/Comfy.Missing")).json() is None
            ok = await client.post(
                "/api/settings/Comfy.Graph.ZoomSpeed", data="1.3", headers=_headers(client)
            )
            assert ok.status == 200
            many = await client.post(
                "/api/settings",
                data=json.dumps({"a.b": [1, {"c": None}], "x": "y"}),
                headers=_headers(client),
            )
            assert many.status == 200
            bad = await client.post("/api/settings", data="[1]", headers=_headers(client))
            assert bad.status == 400
            not_json = await client.post("/api/settings/x", data="NaN", headers=_headers(client))
            assert not_json.status == 400
        finally:
            await client.close()

    kit.run(first)
    assert json.loads(settings_file.read_text()) == {
        "Comfy.Graph.ZoomSpeed": 1.3,
        "a.b": [1, {"c": None}],
        "x": "y",
    }

    async def second() -> None:
        client = await kit.start_client(
            kit.make_runtime(tmp_path), ServerConfig(store_path=tmp_path / "q.sqlite3")
        )
        try:
            settings = await (await client.get("/settings")).json()
            assert settings["Comfy.Graph.ZoomSpeed"] == 1.3 and settings["x"] == "y"
            assert await (await client.get("/settings/a.b")).json() == [1, {"c": None}]
        finally:
            await client.close()

    kit.run(second)

    settings_file.write_text("{corrupt")  # a damaged file reads as no settings, and is replaced on save

    async def third() -> None:
        client = await kit.start_client(
            kit.make_runtime(tmp_path), ServerConfig(store_path=tmp_path / "q.sqlite3")
        )
        try:
            assert await (await client.get("/settings")).json() == {}
            assert (await client.post("/settings/k", data='"v"', headers=_headers(client))).status == 200
        finally:
            await client.close()

    kit.run(third)
    assert json.loads(settings_file.read_text()) == {"k": "v"}
