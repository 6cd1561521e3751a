"""Node declarations are checked when registered, and published in ComfyUI's /object_info shape."""

from __future__ import annotations

import pytest

from engine import api
from engine.errors import NodeDefinitionError
from engine.registry import DuplicateNodeError, NodeRegistry


def register(definition) -> NodeRegistry:
    registry = NodeRegistry()
    registry.register(definition)
    return registry


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([api.Int("x", 50, min=0, max=10)], "above max"),
        ([api.Int("x", -1, min=0, max=10)], "below min"),
        ([api.Int("x", 0, min=5, max=1)], "greater than max"),
        ([api.Input("x", "INT", default=1.5)], "not an integer"),
        ([api.Combo("c", ["a", "b"], default="z")], "not one of the choices"),
        ([api.Input("c", "COMBO")], "needs choices"),
        ([api.String("s", default=3)], "not a string"),  # type: ignore[arg-type]
        ([api.Boolean("b", default="yes")], "not a bool"),  # type: ignore[arg-type]
        ([api.Input("x", "has space")], "invalid socket type"),
        ([api.Int("x"), api.Int("x")], "declared twice"),
        ([api.Float("f", 1.0, step=0)], "step must be positive"),
        ([api.Input("f", "FLOAT", control_after_generate=True)], "only for INT"),
    ],
)
def test_bad_inputs_are_refused_with_the_node_name(inputs, message):
    definition = api.NodeDefinition("Broken", lambda **kw: (), inputs=tuple(inputs))
    with pytest.raises(NodeDefinitionError, match=message) as caught:
        register(definition)
    assert "'Broken'" in str(caught.value)


def test_function_must_accept_every_input():
    @api.node("Mismatch", inputs=[api.Int("x"), api.Int("y")], outputs=["INT"])
    def mismatch(x):
        return (x,)

    with pytest.raises(NodeDefinitionError, match=r"no parameter for input\(s\) \['y'\]"):
        register(mismatch)


def test_lazy_inputs_need_check_lazy_hook():
    @api.node("Lazy", inputs=[api.Input("x", "INT", lazy=True)], outputs=["INT"])
    def lazy(x):
        return (x,)

    with pytest.raises(NodeDefinitionError, match="check_lazy"):
        register(lazy)


def test_duplicate_names_are_refused():
    @api.node("Twice", outputs=["INT"])
    def first():
        return (1,)

    registry = NodeRegistry()
    registry.register(first, source="nodes", builtin=True)
    with pytest.raises(DuplicateNodeError, match="built-in"):
        registry.register(first, source="plugin")


def test_schema_shape_and_file_choices(tmp_path):
    from engine.folders import Folders

    folders = Folders.create(tmp_path)
    (tmp_path / "models" / "checkpoints" / "sub").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "b.safetensors").write_bytes(b"")
    (tmp_path / "models" / "checkpoints" / "sub" / "a.ckpt").write_bytes(b"")
    (tmp_path / "models" / "checkpoints" / "notes.txt").write_text("not a model")

    @api.node(
        "Loader",
        category="loaders",
        display_name="Load",
        description="loads",
        inputs=[
            api.Combo("ckpt_name", api.FileChoices("checkpoints")),
            api.Int("seed", 0, min=0, max=10, control_after_generate=True, tooltip="the seed"),
            api.String("text", multiline=True),
            api.Input("image", "IMAGE", optional=True),
        ],
        outputs=[api.Output("MODEL"), api.Output("CLIP", "clip", tooltip="text encoder")],
    )
    def loader(ckpt_name, seed, text, image=None):
        return (None, None)

    registry = NodeRegistry(resolve_files=folders.resolve_choices)
    registry.register(loader)
    info = registry.object_info()["Loader"]
    assert info["input"]["required"]["ckpt_name"] == [["b.safetensors", "sub/a.ckpt"], {}]
    assert info["input"]["required"]["seed"] == [
        "INT",
        {"default": 0, "min": 0, "max": 10, "step": 1, "tooltip": "the seed", "control_after_generate": True},
    ]
    assert info["input"]["required"]["text"] == ["STRING", {"default": "", "multiline": True}]
    assert info["input"]["optional"] == {"image": ["IMAGE"]}
    assert info["input_order"] == {"required": ["ckpt_name", "seed", "text"], "optional": ["image"]}
    assert info["output"] == ["MODEL", "CLIP"] and info["output_name"] == ["MODEL", "clip"]
    assert info["output_tooltips"] == ["", "text encoder"]
    assert (info["category"], info["display_name"], info["description"]) == ("loaders", "Load", "loads")
    # Files added later show up without re-registering (no restart).
    (tmp_path / "models" / "checkpoints" / "c.safetensors").write_bytes(b"")
    assert "c.safetensors" in registry.node_info("Loader")["input"]["required"]["ckpt_name"][0]


@pytest.mark.parametrize(
    ("inputs", "outputs", "where"),
    [
        ([api.Input("samples", "LATNET")], [], "input 'samples'"),
        ([], [api.Output("IMAGE,MAKS")], "output 0"),
    ],
)
def test_a_built_in_node_with_an_unknown_socket_type_fails_at_registration(inputs, outputs, where):
    definition = api.NodeDefinition("Typo", lambda **kw: (), inputs=tuple(inputs), outputs=tuple(outputs))
    with pytest.raises(NodeDefinitionError, match="unknown socket type") as caught:
        NodeRegistry().register(definition, source="nodes", builtin=True)
    assert "'Typo'" in str(caught.value) and where in str(caught.value)


def test_a_plugin_may_declare_new_socket_types():
    @api.node("Detect", inputs=[api.Input("image", api.IMAGE)], outputs=["BBOX", "BBOX,MASK"])
    def detect(image):
        return (None, None)

    @api.node("DrawBoxes", inputs=[api.Input("boxes", "BBOX"), api.Input("anything", api.ANY)])
    def draw(boxes, anything):
        return ()

    registry = NodeRegistry()
    registry.register(detect, source="detector_pack")
    registry.register(draw, source="detector_pack")
    assert registry.node_info("Detect")["output"] == ["BBOX", "BBOX,MASK"]


def test_every_built_in_node_uses_known_socket_types():
    """The built-in pack registers as built-in: all its types pass the check (none is a typo)."""
    from engine.plugins.loader import load_all_packs

    registry = NodeRegistry()
    report = load_all_packs(registry)
    assert not report.failed() and len(registry) > 80


def test_runtime_choices_come_from_their_source_each_time():
    """Sampler-like choices are asked of the runtime on every schema request, not frozen at registration."""
    names = ["euler"]

    @api.node("Pick", inputs=[api.Combo("sampler_name", api.SAMPLER_CHOICES, default="euler")])
    def pick(sampler_name):
        return ()

    registry = NodeRegistry(choice_sources={"samplers": lambda: list(names)})
    registry.register(pick, builtin=True)
    assert registry.node_info("Pick")["input"]["required"]["sampler_name"][0] == ["euler"]
    names.append("mine")
    assert registry.node_info("Pick")["input"]["required"]["sampler_name"][0] == ["euler", "mine"]
    assert NodeRegistry().choices_for(pick.inputs[0]) == []  # a registry without the service: no choices
