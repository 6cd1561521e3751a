"""A workflow node whose pack failed to import is drawn with the reason, not as an empty red box: the
canvas reads the packs' import errors from GET /diffgraph/plugins. Own server: a pack that cannot load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.conftest import ServerThread, start_server
from tests.browser.helpers import wait_until, workflow

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    base: Path = tmp_path_factory.mktemp("dg_broken_pack")
    pack = base / "custom_nodes" / "frobnicate_pack"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text("import frobnicate_not_installed  # the dependency is missing\n")
    srv = start_server(base)
    yield srv
    srv.stop()


def missing_node(node_id: int, node_type: str, x: float, **properties: str) -> dict:
    return {
        "id": node_id,
        "type": node_type,
        "pos": [x, 80],
        "size": [200, 60],
        "flags": {},
        "order": 0,
        "mode": 0,
        "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": None}],
        "properties": {"Node name for S&R": node_type, **properties},
        "widgets_values": [3, "x"],
    }


def test_missing_node_of_a_failed_pack_shows_its_import_error(page):
    doc = {
        "last_node_id": 2,
        "last_link_id": 0,
        "links": [],
        "version": 0.4,
        "nodes": [
            missing_node(1, "FrobnicateImage", 40, cnr_id="frobnicate_pack"),
            missing_node(2, "Unrelated", 500),
        ],
    }
    page.evaluate(
        """(doc) => { const {app} = window.diffgraph; window.__drawn = [];
        const ctx = app.canvas.getContext('2d'); const orig = ctx.fillText.bind(ctx);
        ctx.fillText = (text, ...rest) => { window.__drawn.push(String(text)); return orig(text, ...rest); };
        app.loadDocument(doc); }""",
        doc,
    )
    reason = page.evaluate("() => window.diffgraph.app.graph.nodes.get(1).missingReason")
    assert reason.startswith("Node type FrobnicateImage is not installed.")
    assert "frobnicate_pack" in reason and "frobnicate_not_installed" in reason
    # The node grew to hold the text, and the text is drawn on the canvas.
    wait_until(page, "() => window.__drawn.some((t) => t.includes('frobnicate'))")
    drawn = " ".join(page.evaluate("() => window.__drawn"))
    assert "FrobnicateImage is not installed." in drawn
    size = page.evaluate("() => window.diffgraph.app.graph.nodes.get(1).size")
    assert size[0] >= 300 and size[1] > 60
    # A node no failed pack claims still names the type and the packs that failed (one may provide it).
    other = page.evaluate("() => window.diffgraph.app.graph.nodes.get(2).missingReason")
    assert other.startswith("Node type Unrelated is not installed.") and "frobnicate_not_installed" in other
    # Saving keeps the unknown nodes as they were in the file.
    saved = {n["id"]: n for n in workflow(page)["nodes"]}
    assert saved[1]["widgets_values"] == [3, "x"] and saved[1]["properties"]["cnr_id"] == "frobnicate_pack"
