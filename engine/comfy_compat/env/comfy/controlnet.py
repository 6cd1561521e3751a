"""ComfyUI's comfy.controlnet for custom packs: loading ControlNet / T2I-Adapter files with diffgraph's
loader (CONTROL_NET values diffgraph's ControlNetApply nodes take), and the names packs import."""

from __future__ import annotations

from typing import Any

from engine.comfy_compat import sd_bridge as _bridge
from engine.comfy_compat.sd_bridge import broadcast_image_to
from engine.handles.adapters import ControlNetHandle as _ControlNetHandle

__all__ = ["ControlBase", "ControlLora", "ControlNet", "T2IAdapter", "broadcast_image_to", "load_controlnet"]


def load_controlnet(ckpt_path: str, model: Any = None, model_options: Any = None) -> Any:
    """A ControlNet or T2I-Adapter file as a CONTROL_NET value (a difference file needs `model`)."""
    return _bridge.load_controlnet(ckpt_path, model)


class ControlBase:
    """ComfyUI's base of control objects, for packs that subclass it (their own controls): the chaining
    and hint state ComfyUI keeps; diffgraph's own ControlNets are `ControlNet` values."""

    def __init__(self, device: Any = None) -> None:
        self.cond_hint_original: Any = None
        self.cond_hint: Any = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.latent_format: Any = None
        self.vae: Any = None
        self.global_average_pooling = False
        self.timestep_range: Any = None
        self.compression_ratio = 8
        self.upscale_algorithm = "nearest-exact"
        self.extra_args: dict[str, Any] = {}
        self.previous_controlnet: Any = None
        self.extra_conds: list[str] = []
        self.strength_type = "constant"
        self.concat_mask = False
        self.extra_concat_orig: list[Any] = []
        self.extra_concat: Any = None

    def set_cond_hint(
        self,
        cond_hint: Any,
        strength: float = 1.0,
        timestep_percent_range: Any = (0.0, 1.0),
        vae: Any = None,
        extra_concat: Any = None,
    ) -> Any:
        self.cond_hint_original = cond_hint
        self.strength = strength
        self.timestep_percent_range = timestep_percent_range
        self.vae = vae
        self.extra_concat_orig = list(extra_concat or [])
        return self

    def set_previous_controlnet(self, controlnet: Any) -> Any:
        self.previous_controlnet = controlnet
        return self

    def pre_run(self, model: Any, percent_to_timestep_function: Any) -> None:
        if self.previous_controlnet is not None and hasattr(self.previous_controlnet, "pre_run"):
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)

    def cleanup(self) -> None:
        if self.previous_controlnet is not None and hasattr(self.previous_controlnet, "cleanup"):
            self.previous_controlnet.cleanup()
        self.cond_hint = None

    def get_models(self) -> list[Any]:
        if self.previous_controlnet is not None and hasattr(self.previous_controlnet, "get_models"):
            return list(self.previous_controlnet.get_models())
        return []

    def copy_to(self, c: Any) -> None:
        for name in ("cond_hint_original", "strength", "timestep_percent_range", "global_average_pooling",
                     "compression_ratio", "upscale_algorithm", "latent_format", "extra_args", "vae",
                     "extra_conds", "strength_type", "concat_mask", "extra_concat_orig"):  # fmt: skip
            setattr(c, name, getattr(self, name))

    def inference_memory_requirements(self, dtype: Any) -> int:
        return 0


# ComfyUI's control classes: diffgraph's CONTROL_NET value for all of them (isinstance works on it).
ControlNet = _bridge.handle_alias("ControlNet", _ControlNetHandle, __name__)
ControlLora = _bridge.handle_alias("ControlLora", _ControlNetHandle, __name__)
T2IAdapter = _bridge.handle_alias("T2IAdapter", _ControlNetHandle, __name__)
