"""UI-format (canvas) workflows convert to the API format the executor runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import api
from engine.errors import WorkflowFormatError, WorkflowValidationError
from engine.graph.loading import load_workflow_file, workflow_from_document
from engine.graph.ui_format import convert_ui_workflow
from engine.graph.validate import validate_workflow
from engine.registry import NodeRegistry


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


# -- older files: every form of widgets_values ComfyUI's canvas has saved ------------------------------

UI_FILES = Path(__file__).parent / "ui_files"


@pytest.mark.parametrize("toggle", [True, False])
def test_seed_toggle_of_2023_keeps_later_widgets_aligned(registry, toggle):
    """March-April 2023 canvases saved the seed control as a boolean (true = randomize, false = fixed)."""
    document = sample_document()
    document["nodes"][2]["widgets_values"] = [42, toggle, 5]
    assert convert_ui_workflow(document, registry).to_api()["3"]["inputs"]["bias"] == 5


def test_seed_toggle_with_later_widgets_missing_takes_defaults(registry):
    document = sample_document()
    document["nodes"][2]["widgets_values"] = [42, True]
    api = convert_ui_workflow(document, registry).to_api()
    assert api["3"]["inputs"]["seed"] == 42 and api["3"]["inputs"]["bias"] == 0


def test_unhashable_value_where_the_control_would_be_goes_to_validation(registry):
    document = sample_document()
    document["nodes"][2]["widgets_values"] = [42, {"not": "a control"}]
    workflow = convert_ui_workflow(document, registry)
    assert workflow.to_api()["3"]["inputs"]["bias"] == {"not": "a control"}
    with pytest.raises(WorkflowValidationError, match="bias"):
        validate_workflow(workflow, registry)


def test_a_boolean_after_a_seed_without_control_is_the_next_widgets_value():
    """A file saved before a node had its control: a boolean there is the next (BOOLEAN) widget's."""
    registry = NodeRegistry()

    @api.node("Flagged", inputs=[api.Int("seed", 0), api.Boolean("flip", False)], output_node=True)
    def flagged(seed, flip):
        return api.NodeOutput()

    registry.register(flagged)
    document = {"nodes": [ui_node(1, "Flagged", widgets=[7, True])], "links": [], "version": 0.4}
    assert convert_ui_workflow(document, registry).to_api()["1"]["inputs"] == {"seed": 7, "flip": True}
    document["nodes"][0]["widgets_values"] = [7, "increment", True]
    assert convert_ui_workflow(document, registry).to_api()["1"]["inputs"] == {"seed": 7, "flip": True}


def test_values_older_canvases_saved_for_force_input_inputs_are_dropped(registry):
    """Some canvases gave forceInput inputs a widget and saved its value; 'Add' has a forceInput 'a'."""
    document = sample_document()
    document["nodes"][4]["widgets_values"] = [0, 7]  # [a (forceInput), b]
    assert convert_ui_workflow(document, registry).to_api()["5"]["inputs"]["b"] == 100  # linked, wins
    document["nodes"][4]["inputs"] = document["nodes"][4]["inputs"][:1]  # b no longer converted
    assert convert_ui_workflow(document, registry).to_api()["5"]["inputs"]["b"] == 7
    document["nodes"][2]["widgets_values"] = [3, 42, "randomize", 5]  # Seeded: [a, seed, control, bias]
    seeded = convert_ui_workflow(document, registry).to_api()["3"]["inputs"]
    assert (seeded["seed"], seeded["bias"]) == (42, 5)


def test_widgets_values_as_array_like_object_and_named(registry):
    document = sample_document()
    document["nodes"][0]["widgets_values"] = {"0": 11, "length": 1}
    assert convert_ui_workflow(document, registry).to_api()["1"]["inputs"] == {"value": 11}
    del document["nodes"][0]["widgets_values"]
    document["nodes"][0]["widgets_values_named"] = {"value": 12}
    assert convert_ui_workflow(document, registry).to_api()["1"]["inputs"] == {"value": 12}


def test_null_combo_takes_its_first_choice_and_null_links_are_skipped(registry):
    document = sample_document()
    document["nodes"].append(ui_node(11, "Pick", outputs=[out("STRING", [])], widgets=[None]))
    document["links"].insert(2, None)  # old canvases leave null where a link was deleted
    assert convert_ui_workflow(document, registry).to_api()["11"]["inputs"] == {"choice": "red"}


def test_upload_placeholder_comes_after_all_required_widgets():
    """The canvas appends the upload button after the required inputs: LoadImageMask is saved as
    [image, channel, "image"] (and without the placeholder by newer canvases)."""
    registry = NodeRegistry()

    @api.node(
        "MaskFromFile",
        inputs=[
            api.Combo("image", ["m.png"], extra={"image_upload": True}),
            api.Combo("channel", ["alpha", "red"], default="alpha"),
            api.Int("blur", 0, optional=True),
        ],
        output_node=True,
    )
    def mask_from_file(image, channel, blur=0):
        return api.NodeOutput()

    registry.register(mask_from_file)
    expected = {"image": "m.png", "channel": "red", "blur": 3}
    for values in (["m.png", "red", "image", 3], ["m.png", "red", 3]):
        document = {"nodes": [ui_node(1, "MaskFromFile", widgets=values)], "links": [], "version": 0.4}
        assert convert_ui_workflow(document, registry).to_api()["1"]["inputs"] == expected


@pytest.fixture
def real_registry(tmp_path):
    """The built-in nodes, with the files old workflows name present so that validation sees them."""
    from engine.folders import Folders
    from engine.runtime import build_runtime

    folders = Folders.create(tmp_path)
    folders.create_directories()
    checkpoints = folders.models["checkpoints"][0]
    checkpoints.mkdir(parents=True)
    (checkpoints / "v1-5-pruned-emaonly.ckpt").write_bytes(b"")
    (folders.input / "example.png").write_bytes(b"")
    return build_runtime(folders, load_custom_nodes=False, with_models=False).registry


def _load_old_file(name, registry):
    workflow = load_workflow_file(UI_FILES / name, registry)
    validate_workflow(workflow, registry)
    return workflow.to_api()


def test_january_2023_file_with_seed_toggle_and_sampler_prefix(real_registry):
    api_graph = _load_old_file("2023-01_seed_toggle_sampler_prefix.json", real_registry)
    widgets = {k: v for k, v in api_graph["3"]["inputs"].items() if not isinstance(v, list)}
    assert widgets == {
        "seed": 8566257,
        "steps": 20,
        "cfg": 8,
        "sampler_name": "euler_ancestral",
        "scheduler": "normal",
        "denoise": 1,
    }
    assert api_graph["9"]["inputs"]["filename_prefix"] == "ComfyUI"  # no widgets_values saved: default


def test_april_2023_file_with_primitive_seed_mask_channel_and_null_link(real_registry):
    api_graph = _load_old_file("2023-04_primitive_seed_inpaint.json", real_registry)
    sampler = api_graph["3"]["inputs"]
    assert sampler["noise_seed"] == 123456 and sampler["add_noise"] == "enable"
    assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"]) == (
        25,
        7.5,
        "dpmpp_2m",
        "karras",
    )
    assert (sampler["start_at_step"], sampler["end_at_step"]) == (0, 10000)
    assert api_graph["11"]["inputs"] == {"image": "example.png", "channel": "red"}
    assert api_graph["12"]["inputs"]["grow_mask_by"] == 6  # saved before the widget existed
    assert "13" not in api_graph and "14" not in api_graph  # PrimitiveNode and Note never reach the API


def test_june_2024_euler_pp_becomes_euler_at_twice_the_cfg(real_registry):
    api_graph = _load_old_file("2024-06_euler_pp.json", real_registry)
    assert (api_graph["3"]["inputs"]["sampler_name"], api_graph["3"]["inputs"]["cfg"]) == ("euler", 7.0)
    assert api_graph["3"]["inputs"]["seed"] == 640177433911441 and api_graph["3"]["inputs"]["steps"] == 20
