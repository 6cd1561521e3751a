"""Our /object_info against ComfyUI's (../shared/reference/comfyui-object_info.json, ComfyUI 0.3.64): every
node type we share with it must publish the same schema (input names and order, types, defaults, ranges,
choices except folder listings, outputs, category, output_node), except the deliberate differences listed
below with their reasons (also in docs/nodes.md). And `diffgraph nodes --missing-vs FILE`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.declarations import FileChoices
from engine.folders import Folders
from engine.reference_schema import ABSENT, Difference, load_reference, schema_differences
from engine.registry import NodeRegistry
from engine.runtime import build_runtime

REPO = Path(__file__).resolve().parents[3]
ENV_VAR = "DIFFGRAPH_COMFY_OBJECT_INFO"
REFERENCE_NAME = "comfyui-object_info.json"

# (node type, where, key) -> why we differ on purpose. Each must still occur (a stale entry fails) and be
# named in docs/nodes.md.
DELIBERATE: dict[tuple[str, str, str], str] = {
    ("ImageScaleToTotalPixels", "optional", "order"): (
        "resolution_steps (added after ComfyUI 0.3.64) is accepted as an optional input, so workflows "
        "with and without it run"
    ),
}


def reference_path() -> Path | None:
    """The reference file: $DIFFGRAPH_COMFY_OBJECT_INFO, else ../shared/reference/ beside the repository."""
    configured = os.environ.get(ENV_VAR)
    candidates = [Path(configured)] if configured else []
    candidates.append(REPO.parent / "shared" / "reference" / REFERENCE_NAME)
    return next((p for p in candidates if p.is_file()), None)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    path = reference_path()
    if path is None:
        pytest.skip(
            f"no ComfyUI /object_info reference: set {ENV_VAR} or put {REFERENCE_NAME} in "
            f"{REPO.parent / 'shared' / 'reference'}"
        )
    return load_reference(path)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> NodeRegistry:
    base = tmp_path_factory.mktemp("schema_base")
    runtime = build_runtime(Folders.create(base), load_custom_nodes=False, with_models=False)
    return runtime.registry


def file_inputs(registry: NodeRegistry, node_type: str) -> set[str]:
    definition = registry.get(node_type)
    assert definition is not None
    return {s.name for s in definition.current_inputs() if isinstance(s.choices, FileChoices)}


def differences(registry: NodeRegistry, reference: dict[str, Any]) -> dict[str, list[Difference]]:
    found = {}
    for name in sorted(reference):
        if name in registry:
            diff = schema_differences(registry.node_info(name), reference[name], file_inputs(registry, name))
            if diff:
                found[name] = diff
    return found


def test_shared_nodes_publish_the_reference_schema(registry, reference):
    unexpected = [
        f"{name}: {d}"
        for name, diffs in differences(registry, reference).items()
        for d in diffs
        if (name, d.where, d.key) not in DELIBERATE
    ]
    assert not unexpected, "schema differs from ComfyUI's:\n" + "\n".join(unexpected)


def test_deliberate_differences_still_exist_and_are_documented(registry, reference):
    found = {(n, d.where, d.key) for n, diffs in differences(registry, reference).items() for d in diffs}
    stale = [key for key in DELIBERATE if key not in found and key[0] in registry]
    assert not stale, f"these differences are gone, remove them from DELIBERATE (and docs/nodes.md): {stale}"
    doc = (REPO / "docs" / "nodes.md").read_text(encoding="utf-8")
    undocumented = sorted({node for node, _, _ in DELIBERATE if f"**{node}**" not in doc})
    assert not undocumented, f"deliberate differences not described in docs/nodes.md: {undocumented}"


# -- the comparison itself ------------------------------------------------------------------------


def _node(inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "input": {"required": inputs},
        "output": ["LATENT"],
        "output_name": ["LATENT"],
        "output_is_list": [False],
        "category": "latent",
        "output_node": False,
        **extra,
    }


def test_comparison_reads_both_combo_dialects_as_one():
    classic = _node({"mode": [["a", "b"], {"default": "b"}]})
    newer = _node({"mode": ["COMBO", {"default": "b", "options": ["a", "b"], "multiselect": False}]})
    assert schema_differences(classic, newer) == []
    reordered = _node({"mode": ["COMBO", {"default": "b", "options": ["b", "a"]}]})
    assert schema_differences(classic, reordered) == [
        Difference("required.mode", "choices", ["a", "b"], ["b", "a"])
    ]


def test_comparison_finds_each_kind_of_difference():
    ours = _node({"x": ["INT", {"default": 1, "min": 0, "step": 1}], "y": ["FLOAT", {"round": 0.01}]})
    theirs = _node(
        {"y": ["FLOAT", {}], "x": ["INT", {"default": 2, "min": 0}]},
        category="latent/advanced",
        output_node=True,
    )
    found = {(d.where, d.key): (d.ours, d.reference) for d in schema_differences(ours, theirs)}
    assert found == {
        ("required", "order"): (["x", "y"], ["y", "x"]),
        ("required.x", "default"): (1, 2),
        ("required.x", "step"): (1, ABSENT),
        ("required.y", "round"): (0.01, ABSENT),
        ("node", "category"): ("latent", "latent/advanced"),
        ("node", "output_node"): (False, True),
    }
    # A boolean default is not the number 1 (JSON true != 1 for a widget).
    assert schema_differences(
        _node({"b": ["BOOLEAN", {"default": True}]}), _node({"b": ["BOOLEAN", {"default": 1}]})
    )
    assert schema_differences(_node({"t": ["INT"]}), _node({"t": ["FLOAT"]})) == [
        Difference("required.t", "type", "INT", "FLOAT")
    ]


def test_comparison_skips_folder_listings_only():
    ours = _node({"ckpt": [["mine.safetensors"], {}]})
    marked = _node({"ckpt": [["<files>"]]})
    assert schema_differences(ours, marked) == []
    unmarked = _node({"ckpt": [["pixel_space"]]})
    assert schema_differences(ours, unmarked) != []
    assert schema_differences(ours, unmarked, file_inputs={"ckpt"}) == []


# -- diffgraph nodes --missing-vs ------------------------------------------------------------------


def test_missing_vs_lists_absent_nodes_by_category_with_the_count(tmp_path, capsys):
    fake = {
        "KSampler": {"category": "sampling"},
        "NoSuchNodeB": {"category": "zeta/tools"},
        "NoSuchNodeA": {"category": "zeta/tools"},
        "AnotherMissing": {"category": "alpha"},
    }
    path = tmp_path / "object_info.json"
    path.write_text(json.dumps(fake))
    args = ["nodes", "--missing-vs", str(path), "--base-directory", str(tmp_path), "--disable-custom-nodes"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "alpha (1):",
        "  AnotherMissing",
        "zeta/tools (2):",
        "  NoSuchNodeA",
        "  NoSuchNodeB",
        f"covered 1/4 node types of {path}",
    ]


def test_missing_vs_counts_the_real_reference(tmp_path, capsys, reference, registry):
    path = reference_path()
    args = ["nodes", "--missing-vs", str(path), "--base-directory", str(tmp_path), "--disable-custom-nodes"]
    assert main(args) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    covered = sum(1 for name in reference if name in registry)
    assert last == f"covered {covered}/{len(reference)} node types of {path}"


# -- widgets declared without a default (as ComfyUI declares them) ----------------------------------


def test_ui_workflow_missing_undefaulted_widgets_gets_the_frontends_values(registry):
    """A UI-format node saved before a widget existed gets what ComfyUI's frontend gives a widget without
    a declared default: a combo its first choice, a text "", a boolean false (KSampler's scheduler is
    "simple", ComfyUI's first scheduler, not the "normal" we used to declare)."""
    from engine.graph.ui_widgets import read_widget_values

    def values(node_type: str, widgets: dict) -> dict:
        specs = registry.get(node_type).current_inputs()
        return read_widget_values(node_type, {"widgets_values": widgets}, specs, registry.choices_for)

    sampler = values("KSampler", {"seed": 1, "steps": 4, "cfg": 7.0, "denoise": 1.0})
    assert sampler["sampler_name"] == "euler" and sampler["scheduler"] == "simple"
    assert values("CLIPTextEncode", {})["text"] == ""
    assert values("StringContains", {"string": "a", "substring": "b"})["case_sensitive"] is True  # declared
    assert values("SamplerSASolver", {})["use_pece"] is False
