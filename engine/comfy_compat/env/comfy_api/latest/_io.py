"""ComfyUI's V3 node API (`from comfy_api.latest import io`): ComfyNode, Schema, the typed inputs and outputs,
NodeOutput, Hidden. A V3 class registers like a classic one: the loader asks it for its NodeDefinition
(`__diffgraph_definition__`, built by engine/comfy_compat/v3.py). The classic attributes ComfyUI derives from
the schema (INPUT_TYPES, RETURN_TYPES, ...) exist too, since packs read them from each other's classes.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum
from typing import Any

from comfy_execution.graph_utils import ExecutionBlocker

from engine.comfy_compat import v3 as _adapter


class _StringIOType(str):
    """A socket type whose `!=` follows ComfyUI's matching: "*" matches all, unions match when one side's
    parts include the other's."""

    def __ne__(self, value: object) -> bool:
        if self == "*" or value == "*":
            return False
        if not isinstance(value, str):
            return True
        mine, theirs = frozenset(self.split(",")), frozenset(value.split(","))
        return not (theirs.issubset(mine) or mine.issubset(theirs))

    __hash__ = str.__hash__


class FolderType(str, Enum):  # noqa: UP042 - str() of a member as in ComfyUI (not StrEnum's)
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):  # noqa: UP042
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):  # noqa: UP042
    number = "number"
    slider = "slider"


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class RemoteOptions:
    def __init__(self, route: str, refresh_button: bool, control_after_refresh: str = "first", **kw: Any):
        self.options = {
            "route": route,
            "refresh_button": refresh_button,
            "control_after_refresh": control_after_refresh,
        }
        self.options.update(kw)

    def as_dict(self) -> dict[str, Any]:
        return _prune(self.options)


class _IO_V3:
    Parent: Any = None

    @property
    def io_type(self) -> Any:
        return self.Parent.io_type

    @property
    def Type(self) -> Any:
        return self.Parent.Type


class Input(_IO_V3):
    """A V3 input. Options newer ComfyUI versions added (e.g. `advanced`) are kept and published as they are."""

    def __init__(
        self,
        id: str,
        display_name: str | None = None,
        optional: bool = False,
        tooltip: str | None = None,
        lazy: bool | None = None,
        extra_dict: dict[str, Any] | None = None,
        **more: Any,
    ):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = {**(extra_dict or {}), **more}

    def as_dict(self) -> dict[str, Any]:
        own = {"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip}
        return _prune({**own, "lazy": self.lazy}) | _prune(self.extra_dict)

    def get_io_type(self) -> Any:
        return _StringIOType(self.io_type)


class WidgetInput(Input):
    def __init__(
        self,
        id: str,
        display_name: str | None = None,
        optional: bool = False,
        tooltip: str | None = None,
        lazy: bool | None = None,
        default: Any = None,
        socketless: bool | None = None,
        widget_type: str | None = None,
        force_input: bool | None = None,
        extra_dict: dict[str, Any] | None = None,
        **more: Any,
    ):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, **more)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def as_dict(self) -> dict[str, Any]:
        mine = {"default": self.default, "socketless": self.socketless, "widgetType": self.widget_type}
        return super().as_dict() | _prune({**mine, "forceInput": self.force_input})

    def get_io_type(self) -> Any:
        return self.widget_type if self.widget_type is not None else super().get_io_type()


class Output(_IO_V3):
    def __init__(
        self,
        id: str | None = None,
        display_name: str | None = None,
        tooltip: str | None = None,
        is_output_list: bool = False,
        **more: Any,
    ):
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list
        self.extra_dict = more

    def as_dict(self) -> dict[str, Any]:
        own = {"display_name": self.display_name, "tooltip": self.tooltip}
        return _prune({**own, "is_output_list": self.is_output_list})

    def get_io_type(self) -> Any:
        return self.io_type


class _ComfyType:
    Type: Any = Any
    io_type: Any = None


class ComfyTypeI(_ComfyType):
    Input: Any = Input


class ComfyTypeIO(ComfyTypeI):
    Output: Any = Output


def comfytype(io_type: str, **kwargs: Any) -> Any:
    """Bind `io_type` to a type class; its Input/Output classes become its own subclasses pointing back
    at it (an inherited Input would otherwise be shared between types)."""

    def decorate(cls: Any) -> Any:
        if not issubclass(cls, _ComfyType):
            cls = type(
                cls.__name__, (cls, ComfyTypeIO), {"__module__": cls.__module__, "__doc__": cls.__doc__}
            )
        cls.io_type = _StringIOType(io_type)
        for role in ("Input", "Output"):
            base = getattr(cls, role, None)
            if base is not None:
                name = f"{cls.__name__}.{role}"
                setattr(cls, role, type(role, (base,), {"Parent": cls, "__qualname__": name}))
        return cls

    return decorate


def Custom(io_type: str) -> Any:
    """A type for a socket type of the pack's own."""

    class CustomComfyType(ComfyTypeIO):
        pass

    return comfytype(io_type)(CustomComfyType)


def _simple(name: str, io_type: str) -> Any:
    return comfytype(io_type)(type(name, (ComfyTypeIO,), {"__module__": __name__}))


@comfytype(io_type="BOOLEAN")
class Boolean(ComfyTypeIO):
    Type = bool

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: bool | None = None,
                     label_on: str | None = None, label_off: str | None = None, socketless: bool | None = None,
                     force_input: bool | None = None, **more: Any):  # fmt: skip
            super().__init__(
                id, display_name, optional, tooltip, lazy, default, socketless, None, force_input, **more
            )
            self.labels = {"label_on": label_on, "label_off": label_off}

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _prune(self.labels)


class _NumberInput(WidgetInput):
    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: Any = None, min: Any = None, max: Any = None, step: Any = None,
                 control_after_generate: bool | None = None, display_mode: Any = None, socketless: bool | None = None,
                 force_input: bool | None = None, round: Any = None, **more: Any):  # fmt: skip
        super().__init__(
            id, display_name, optional, tooltip, lazy, default, socketless, None, force_input, **more
        )
        display = display_mode.value if isinstance(display_mode, Enum) else display_mode
        self.numbers = {"min": min, "max": max, "step": step, "round": round}
        self.numbers |= {"control_after_generate": control_after_generate, "display": display}

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | _prune(self.numbers)


@comfytype(io_type="INT")
class Int(ComfyTypeIO):
    Type = int
    Input = _NumberInput


@comfytype(io_type="FLOAT")
class Float(ComfyTypeIO):
    Type = float
    Input = _NumberInput


@comfytype(io_type="STRING")
class String(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, multiline: bool = False,
                     placeholder: str | None = None, default: str | None = None, dynamic_prompts: bool | None = None,
                     socketless: bool | None = None, force_input: bool | None = None, **more: Any):  # fmt: skip
            super().__init__(
                id, display_name, optional, tooltip, lazy, default, socketless, None, force_input, **more
            )
            self.text = {
                "multiline": multiline,
                "placeholder": placeholder,
                "dynamicPrompts": dynamic_prompts,
            }

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _prune(self.text)


@comfytype(io_type="COMBO")
class Combo(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, options: Any = None, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: Any = None,
                     control_after_generate: bool | None = None, upload: Any = None, image_folder: Any = None,
                     remote: Any = None, socketless: bool | None = None, **more: Any):  # fmt: skip
            if isinstance(options, type) and issubclass(options, Enum):
                options = [member.value for member in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, **more)
            self.multiselect = False
            self.options = list(options) if options is not None else None
            self.combo = {"control_after_generate": control_after_generate, "upload": upload}
            self.combo |= {"image_folder": image_folder, "remote": remote}

        def as_dict(self) -> dict[str, Any]:
            c = self.combo
            upload = {c["upload"].value: True} if c["upload"] is not None else {}
            folder = c["image_folder"].value if c["image_folder"] is not None else None
            remote = c["remote"].as_dict() if c["remote"] is not None else None
            mine = {"multiselect": self.multiselect, "options": self.options}
            mine |= {"control_after_generate": c["control_after_generate"], **upload}
            return super().as_dict() | _prune({**mine, "image_folder": folder, "remote": remote})

    class Output(Output):
        def __init__(self, id: str | None = None, display_name: str | None = None, options: Any = None,
                     tooltip: str | None = None, is_output_list: bool = False, **more: Any):  # fmt: skip
            super().__init__(id, display_name, tooltip, is_output_list, **more)
            self.options = options if options is not None else []

        @property
        def io_type(self) -> Any:
            return self.options


@comfytype(io_type="COMBO")
class MultiCombo(ComfyTypeI):
    Type = list

    class Input(Combo.Input):
        def __init__(self, id: str, options: Any, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: Any = None,
                     placeholder: str | None = None, chip: bool | None = None, **more: Any):  # fmt: skip
            super().__init__(id, options, display_name, optional, tooltip, lazy, default, **more)
            self.multiselect = True
            self.multi = {"multi_select": True, "placeholder": placeholder, "chip": chip}

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _prune(self.multi)


Image = _simple("Image", "IMAGE")
Mask = _simple("Mask", "MASK")
Latent = _simple("Latent", "LATENT")
Conditioning = _simple("Conditioning", "CONDITIONING")
Sampler = _simple("Sampler", "SAMPLER")
Sigmas = _simple("Sigmas", "SIGMAS")
Noise = _simple("Noise", "NOISE")
Guider = _simple("Guider", "GUIDER")
Clip = _simple("Clip", "CLIP")
ControlNet = _simple("ControlNet", "CONTROL_NET")
Vae = _simple("Vae", "VAE")
Model = _simple("Model", "MODEL")
ClipVision = _simple("ClipVision", "CLIP_VISION")
ClipVisionOutput = _simple("ClipVisionOutput", "CLIP_VISION_OUTPUT")
StyleModel = _simple("StyleModel", "STYLE_MODEL")
Gligen = _simple("Gligen", "GLIGEN")
UpscaleModel = _simple("UpscaleModel", "UPSCALE_MODEL")
LatentUpscaleModel = _simple("LatentUpscaleModel", "LATENT_UPSCALE_MODEL")
Audio = _simple("Audio", "AUDIO")
Video = _simple("Video", "VIDEO")
SVG = _simple("SVG", "SVG")
LoraModel = _simple("LoraModel", "LORA_MODEL")
LossMap = _simple("LossMap", "LOSS_MAP")
Voxel = _simple("Voxel", "VOXEL")
Mesh = _simple("Mesh", "MESH")
Hooks = _simple("Hooks", "HOOKS")
HookKeyframes = _simple("HookKeyframes", "HOOK_KEYFRAMES")
TimestepsRange = _simple("TimestepsRange", "TIMESTEPS_RANGE")
LatentOperation = _simple("LatentOperation", "LATENT_OPERATION")
FlowControl = _simple("FlowControl", "FLOW_CONTROL")
Accumulation = _simple("Accumulation", "ACCUMULATION")
Load3DCamera = _simple("Load3DCamera", "LOAD3D_CAMERA")
Load3D = _simple("Load3D", "LOAD_3D")
Load3DAnimation = _simple("Load3DAnimation", "LOAD_3D_ANIMATION")
Photomaker = _simple("Photomaker", "PHOTOMAKER")
Point = _simple("Point", "POINT")
FaceAnalysis = _simple("FaceAnalysis", "FACE_ANALYSIS")
BBOX = _simple("BBOX", "BBOX")
SEGS = _simple("SEGS", "SEGS")
AnyType = _simple("AnyType", "*")
MODEL_PATCH = _simple("MODEL_PATCH", "MODEL_PATCH")
AudioEncoder = _simple("AudioEncoder", "AUDIO_ENCODER")
AudioEncoderOutput = _simple("AudioEncoderOutput", "AUDIO_ENCODER_OUTPUT")
WanCameraEmbedding = _simple("WanCameraEmbedding", "WAN_CAMERA_EMBEDDING")
Webcam = _simple("Webcam", "WEBCAM")
Tracks = _simple("Tracks", "TRACKS")
BoundingBox = _simple("BoundingBox", "BOUNDING_BOX")

# The dynamic inputs (MultiType, MatchType, Autogrow, DynamicCombo) live in _io_dynamic, which needs the
# classes above; their names are part of this module as in ComfyUI.
from comfy_api.latest._io_dynamic import (  # noqa: E402, F401
    Autogrow,
    AutogrowDynamic,
    ComboDynamic,
    DynamicCombo,
    DynamicInput,
    DynamicOutput,
    MatchType,
    MultiType,
)


class Hidden(str, Enum):  # noqa: UP042
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """`cls.hidden` inside execute: the hidden values the schema asked for; any other name reads None."""

    def __init__(self, values: dict[str, Any] | None = None):
        for member in Hidden:
            setattr(self, member.name, (values or {}).get(member.value))

    def __getattr__(self, key: str) -> Any:
        return None

    @classmethod
    def from_dict(cls, d: dict[Any, Any] | None) -> HiddenHolder:
        return cls({(k.value if isinstance(k, Hidden) else k): v for k, v in (d or {}).items()})


class Schema:
    """A V3 node's declaration. Unknown keywords (fields of newer ComfyUI versions) are kept as attributes."""

    def __init__(self, node_id: str, display_name: str | None = None, category: str = "sd",
                 inputs: list[Any] | None = None, outputs: list[Any] | None = None, hidden: list[Any] | None = None,
                 description: str = "", is_input_list: bool = False, is_output_node: bool = False,
                 is_deprecated: bool = False, is_experimental: bool = False, is_api_node: bool = False,
                 not_idempotent: bool = False, enable_expand: bool = False, search_aliases: list[str] | None = None,
                 accept_all_inputs: bool = False, **more: Any):  # fmt: skip
        self.node_id, self.display_name, self.category = node_id, display_name, category
        self.inputs, self.outputs, self.hidden = inputs, outputs, hidden
        self.description, self.is_input_list, self.is_output_node = description, is_input_list, is_output_node
        self.is_deprecated, self.is_experimental, self.is_api_node = (
            is_deprecated,
            is_experimental,
            is_api_node,
        )
        self.not_idempotent, self.enable_expand = not_idempotent, enable_expand
        self.search_aliases, self.accept_all_inputs = search_aliases, accept_all_inputs
        self.__dict__.update(more)

    def validate(self) -> None:
        inputs = [i.id for i in self.inputs or []]
        outputs = [o.id for o in self.outputs or []]
        issues = [
            f"{what} ids must be unique, but {[i for i, n in Counter(ids).items() if n > 1]} are not."
            for what, ids in (("Input", inputs), ("Output", outputs))
            if len(set(ids)) != len(ids)
        ]
        if set(inputs) & set(outputs):
            issues.append(
                f"Ids must be unique between inputs and outputs, but {set(inputs) & set(outputs)} are not."
            )
        if issues:
            raise ValueError("\n".join(issues))

    def finalize(self) -> None:
        """As ComfyUI: API nodes get the auth hidden inputs, output nodes PROMPT and EXTRA_PNGINFO, and outputs
        without an id one from their position and type."""
        wanted = [Hidden.auth_token_comfy_org, Hidden.api_key_comfy_org] if self.is_api_node else []
        wanted += [Hidden.prompt, Hidden.extra_pnginfo] if self.is_output_node else []
        for member in wanted:
            self.hidden = self.hidden or []
            if member not in self.hidden:
                self.hidden.append(member)
        for index, output in enumerate(self.outputs or []):
            if output.id is None:
                output.id = f"_{index}_{output.io_type}_"

    def get_v1_info(self, cls: Any) -> dict[str, Any]:
        return _adapter.v1_node_info(self, cls)


class _UIOutput:
    def as_dict(self) -> dict[str, Any]:
        raise NotImplementedError


class NodeOutput:
    """What execute returns: output values, and optionally UI data, an expansion graph or a blocking message."""

    def __init__(self, *args: Any, ui: Any = None, expand: dict[str, Any] | None = None,
                 block_execution: str | None = None):  # fmt: skip
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self) -> tuple[Any, ...] | None:
        return self.args if self.args else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeOutput:
        result = data.get("result", ())
        if isinstance(result, ExecutionBlocker):
            return cls(block_execution=result.message)
        return cls(*(result or ()), ui=data.get("ui"), expand=data.get("expand"))

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


class classproperty:
    def __init__(self, getter: Any):
        self.getter = getter

    def __get__(self, instance: Any, owner: Any) -> Any:
        return self.getter(owner)


# ComfyNode reads the classes above (_io_node imports this module).
from comfy_api.latest._io_node import ComfyNode, _ComfyNodeBaseInternal  # noqa: E402, F401
