"""UI-format (canvas) workflows convert to the API format the executor runs."""

from __future__ import annotations

import pytest

from engine.errors import WorkflowFormatError
from engine.graph.loading import workflow_from_document
from engine.graph.ui_format import convert_ui_workflow


def ui_node(node_id, node_type, *, inputs=(), outputs=(), widgets=None, mode=0, title=None):
    node = {
        "id": node_id,
        "type": node_type,
        "pos": [0, 0],
        "size": [200, 100],
        "flags": {},
        "order": node_id,
        "mode": mode,
        "inputs": list(inputs),
        "outputs": list(outputs),
        "properties": {"Node name for S&R": node_type},
    }
    if widgets is not None:
        node["widgets_values"] = widgets
    if title:
        node["title"] = title
    return node


def sock(name, type_, link=None, widget=None):
    entry = {"name": name, "type": type_, "link": link}
    if widget:
        entry["widget"] = {"name": widget}
    return entry


def out(type_, links):
    return {"name": type_, "type": type_, "links": links, "slot_index": 0}


def sample_document() -> dict:
    """Const -> Reroute -> Seeded -> Add(bypassed) -> Add(b from a PrimitiveNode) -> Sink, plus a muted
    branch, a Note, and the control_after_generate value after the seed widget."""
    nodes = [
        ui_node(1, "Const", outputs=[out("INT", [1])], widgets=[2]),
        ui_node(2, "Reroute", inputs=[sock("", "*", 1)], outputs=[out("INT", [2])]),
        ui_node(
            3, "Seeded", inputs=[sock("a", "INT", 2)], outputs=[out("INT", [3])], widgets=[42, "randomize", 5]
        ),
        ui_node(4, "Add", inputs=[sock("a", "INT", 3)], outputs=[out("INT", [4])], widgets=[77], mode=4),
        ui_node(
            5,
            "Add",
            inputs=[sock("a", "INT", 4), sock("b", "INT", 5, widget="b")],
            outputs=[out("INT", [6])],
            widgets=[1],
            title="Final add",
        ),
        ui_node(
            6,
            "PrimitiveNode",
            outputs=[{"name": "INT", "type": "INT", "links": [5], "widget": {"name": "b"}}],
            widgets=[100, "fixed"],
        ),
        ui_node(7, "Sink", inputs=[sock("value", "INT", 6)]),
        ui_node(8, "Const", outputs=[out("INT", [7])], widgets=[9], mode=2),
        ui_node(9, "Sink", inputs=[sock("value", "INT", 7)], mode=2),
        ui_node(10, "Note", widgets=["remember to change the seed"]),
    ]
    links = [
        [1, 1, 0, 2, 0, "*"],
        [2, 2, 0, 3, 0, "INT"],
        [3, 3, 0, 4, 0, "INT"],
        [4, 4, 0, 5, 0, "INT"],
        [5, 6, 0, 5, 1, "INT"],
        [6, 5, 0, 7, 0, "INT"],
        [7, 8, 0, 9, 0, "INT"],
    ]
    return {
        "last_node_id": 10,
        "last_link_id": 7,
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def test_ui_to_api_conversion(registry):
    workflow = convert_ui_workflow(sample_document(), registry)
    api = workflow.to_api()
    assert set(api) == {"1", "3", "5", "7"}  # no Reroute, PrimitiveNode, Note, muted or bypassed nodes
    assert api["1"]["inputs"] == {"value": 2}
    # Reroute followed; control_after_generate value skipped so 'bias' gets 5, not "randomize".
    assert api["3"]["inputs"] == {"a": ["1", 0], "seed": 42, "bias": 5}
    # Bypassed Add passes its INT input through; the PrimitiveNode's value lands in the converted widget.
    assert api["5"]["inputs"] == {"a": ["3", 0], "b": 100}
    assert api["5"]["_meta"] == {"title": "Final add"}
    assert api["7"]["inputs"] == {"value": ["5", 0]}
    assert workflow.ui_document is not None


def test_converted_ui_workflow_runs(registry, executor):
    workflow = workflow_from_document(sample_document(), registry)
    result = executor.run(workflow)
    assert result.ok
    assert result.ui_outputs == {"7": {"values": [2 * 1000 + 42 + 5 + 100]}}


def test_muted_source_leaves_required_input_missing(registry):
    document = sample_document()
    document["nodes"][8]["mode"] = 0  # un-mute the Sink but keep its source muted
    workflow = convert_ui_workflow(document, registry)
    assert workflow.to_api()["9"]["inputs"] == {}


def test_old_files_without_control_value_and_missing_widgets(registry):
    document = sample_document()
    document["nodes"][2]["widgets_values"] = [42]  # saved before control_after_generate / bias existed
    api = convert_ui_workflow(document, registry).to_api()
    assert api["3"]["inputs"]["seed"] == 42 and api["3"]["inputs"]["bias"] == 0  # default fills in


def test_widgets_values_as_dict(registry):
    document = sample_document()
    document["nodes"][0]["widgets_values"] = {"value": 11}
    assert convert_ui_workflow(document, registry).to_api()["1"]["inputs"] == {"value": 11}


def test_unknown_node_type_is_kept_for_validation_to_report(registry):
    document = sample_document()
    document["nodes"][0]["type"] = "NotInstalled"
    api = convert_ui_workflow(document, registry).to_api()
    assert api["1"]["class_type"] == "NotInstalled"


def test_broken_documents_are_rejected_with_reason(registry):
    document = sample_document()
    document["links"].pop()  # node 9 refers to link 7, now missing
    document["nodes"][8]["mode"] = 0
    with pytest.raises(WorkflowFormatError, match="link 7"):
        convert_ui_workflow(document, registry)
    with pytest.raises(WorkflowFormatError, match="not a workflow"):
        workflow_from_document({"hello": 1}, registry)


def test_api_export_round_trips(registry):
    workflow = convert_ui_workflow(sample_document(), registry)
    again = workflow_from_document(workflow.to_api(), registry)
    assert again.to_api() == workflow.to_api()
