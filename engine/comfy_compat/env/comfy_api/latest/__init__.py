"""ComfyUI's `comfy_api.latest`: `io` (node classes and types), `ui` (UI outputs), ComfyExtension for
`comfy_entrypoint`, and the Input / InputImpl / Types namespaces."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from typing import Any

from comfy_api.latest import _io as io
from comfy_api.latest import _ui as ui
from comfy_api.latest._input import AudioInput, ImageInput, LatentInput, MaskInput, VideoInput
from engine.execution.context import running_context


class ComfyExtension(ABC):
    """What a pack's module-level `async def comfy_entrypoint()` returns: its node classes, and a hook run
    when it loads."""

    async def on_load(self) -> None:  # noqa: B027 - optional hook, as in ComfyUI
        """Called once when the pack loads, before get_node_list."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The pack's V3 node classes."""


def _report_progress(value: float, max_value: float, preview_image: Any) -> None:
    """Progress of the running node (a node_id argument is accepted; the running node reports)."""
    context = running_context()
    if context is None:
        raise ValueError("node_id must be provided if not in executing context")
    context.progress(int(value), int(max_value), preview_image)


class ComfyAPI_latest:
    VERSION = "latest"
    STABLE = False

    class Execution:
        async def set_progress(self, value: float, max_value: float, node_id: str | None = None,
                               preview_image: Any = None, ignore_size_limit: bool = False) -> None:  # fmt: skip
            _report_progress(value, max_value, preview_image)

    def __init__(self) -> None:
        self.execution = ComfyAPI_latest.Execution()


class ComfyAPISync:
    """The same calls, synchronous."""

    VERSION = "latest"
    STABLE = False

    class Execution:
        def set_progress(self, value: float, max_value: float, node_id: str | None = None,
                         preview_image: Any = None, ignore_size_limit: bool = False) -> None:  # fmt: skip
            _report_progress(value, max_value, preview_image)

    def __init__(self) -> None:
        self.execution = ComfyAPISync.Execution()


ComfyAPI = ComfyAPI_latest


class Input:
    Image = ImageInput
    Audio = AudioInput
    Mask = MaskInput
    Latent = LatentInput
    Video = VideoInput


class InputImpl:
    """Video containers are not implemented: packs reach these only when they handle VIDEO values."""


class VideoCodec(str, Enum):  # noqa: UP042 - a str Enum as in ComfyUI
    AUTO = "auto"
    H264 = "h264"

    @classmethod
    def as_input(cls) -> list[str]:
        return [member.value for member in cls]


class VideoContainer(str, Enum):  # noqa: UP042
    AUTO = "auto"
    MP4 = "mp4"

    @classmethod
    def as_input(cls) -> list[str]:
        return [member.value for member in cls]

    @classmethod
    def get_extension(cls, value: Any) -> str:
        return "mp4" if cls(value) in (cls.MP4, cls.AUTO) else ""


@dataclass
class VideoComponents:
    images: Any
    frame_rate: Fraction
    audio: Any = None
    metadata: dict[str, Any] | None = None


class Types:
    """The option lists packs declare video inputs with; VIDEO values themselves are not implemented."""

    VideoCodec = VideoCodec
    VideoContainer = VideoContainer
    VideoComponents = VideoComponents


comfy_io = io

__all__ = [
    "ComfyAPI",
    "ComfyAPISync",
    "Input",
    "InputImpl",
    "Types",
    "ComfyExtension",
    "io",
    "comfy_io",
    "ui",
]
