"""ComfyUI's `comfy_api.latest.ui`: what a V3 node puts in `io.NodeOutput(ui=...)`. Each object's as_dict() is
the node's UI data ({"images": [...]} and so on); previews are written to the temp folder as PNGs, as ComfyUI
writes them, with the prompt and workflow of `cls.hidden` when the node passes `cls`."""

from __future__ import annotations

import random
import string
from typing import Any

import torch

from comfy_api.latest._io import FolderType, _UIOutput
from engine.comfy_compat.binding import current
from engine.comfy_compat.image_saving import save_images


class SavedResult(dict):  # type: ignore[type-arg]
    def __init__(self, filename: str, subfolder: str, type: Any):
        super().__init__(filename=filename, subfolder=subfolder, type=getattr(type, "value", type))

    @property
    def filename(self) -> str:
        return str(self["filename"])

    @property
    def subfolder(self) -> str:
        return str(self["subfolder"])

    @property
    def type(self) -> str:
        return str(self["type"])


class SavedImages(_UIOutput):
    def __init__(self, results: list[Any], is_animated: bool = False):
        self.results, self.is_animated = results, is_animated

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"images": self.results}
        if self.is_animated:
            data["animated"] = (True,)
        return data


class SavedAudios(_UIOutput):
    def __init__(self, results: list[Any]):
        self.results = results

    def as_dict(self) -> dict[str, Any]:
        return {"audio": self.results}


class ImageSaveHelper:
    @staticmethod
    def save_images(images: Any, filename_prefix: str, folder_type: Any, cls: Any = None,
                    compress_level: int = 4) -> list[SavedResult]:  # fmt: skip
        kind = getattr(folder_type, "value", folder_type)
        folders = current().folders
        directory = folders.temp if kind == FolderType.temp.value else folders.output
        hidden = getattr(cls, "hidden", None)
        entries = save_images(
            images, filename_prefix, directory, kind, compress_level=compress_level,
            prompt=getattr(hidden, "prompt", None), extra_pnginfo=getattr(hidden, "extra_pnginfo", None),
        )  # fmt: skip
        return [SavedResult(e["filename"], e["subfolder"], e["type"]) for e in entries]

    @staticmethod
    def get_save_images_ui(
        images: Any, filename_prefix: str, cls: Any = None, compress_level: int = 4
    ) -> SavedImages:
        saved = ImageSaveHelper.save_images(images, filename_prefix, FolderType.output, cls, compress_level)
        return SavedImages(saved)


def _temp_prefix() -> str:
    return "ComfyUI_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))


class PreviewImage(_UIOutput):
    def __init__(self, image: Any, animated: bool = False, cls: Any = None, **kwargs: Any):
        self.values = ImageSaveHelper.save_images(
            image, _temp_prefix(), FolderType.temp, cls, compress_level=1
        )
        self.animated = animated

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.values, "animated": (self.animated,)}


class PreviewMask(PreviewImage):
    def __init__(self, mask: Any, animated: bool = False, cls: Any = None, **kwargs: Any):
        # a (B, H, W) mask shown as a grey image
        image = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        super().__init__(torch.as_tensor(image), animated, cls, **kwargs)


class PreviewText(_UIOutput):
    def __init__(self, value: str, **kwargs: Any):
        self.value = value

    def as_dict(self) -> dict[str, Any]:
        return {"text": (self.value,)}


class PreviewVideo(_UIOutput):
    def __init__(self, values: list[Any], **kwargs: Any):
        self.values = values

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.values, "animated": (True,)}


class PreviewAudio(_UIOutput):
    """Audio previews are not written (diffgraph has no audio encoder); the entries given are shown."""

    def __init__(self, audio: Any, cls: Any = None, **kwargs: Any):
        self.values = list(kwargs.get("values", []))

    def as_dict(self) -> dict[str, Any]:
        return {"audio": self.values}


class PreviewUI3D(_UIOutput):
    def __init__(self, model_file: Any, camera_info: Any, **kwargs: Any):
        self.model_file, self.camera_info = model_file, camera_info

    def as_dict(self) -> dict[str, Any]:
        return {"result": [self.model_file, self.camera_info]}
