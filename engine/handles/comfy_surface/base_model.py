"""ComfyUI's model objects as packs see them on a MODEL value: ``model.model`` (a ``BaseModel``),
``model.model.latent_format``, ``model.model.model_config``, ``ModelType`` - built over diffgraph's UNet
and model sampling, written from ComfyUI's documented behaviour (comfy/model_base.py,
comfy/latent_formats.py).

``process_latent_in`` / ``process_latent_out`` apply the family's latent format (raw VAE latents <-> the
model's space), as ComfyUI's; see engine.handles.comfy_surface.latents.
"""

from __future__ import annotations

import math
import weakref
from enum import Enum
from types import SimpleNamespace
from typing import Any

import torch

from engine.handles.comfy_surface.latents import comfy_latent_format

# ---- model types and base models --------------------------------------------------------------


class ModelType(Enum):
    """ComfyUI's prediction kinds (comfy.model_base.ModelType), same member values."""

    EPS = 1
    V_PREDICTION = 2
    V_PREDICTION_EDM = 3
    STABLE_CASCADE = 4
    EDM = 5
    FLOW = 6
    V_PREDICTION_CONTINUOUS = 7
    FLUX = 8
    IMG_TO_IMG = 9
    FLOW_COSMOS = 10


def model_type_for(family: str, prediction: str) -> ModelType:
    if family == "flux":
        return ModelType.FLUX
    return {"eps": ModelType.EPS, "v": ModelType.V_PREDICTION, "flow": ModelType.FLOW}[prediction]


def unet_config_dict(module: Any) -> dict[str, Any]:
    """ComfyUI's ``unet_config`` keys from a diffgraph UNetConfig (what packs read to tell models apart)."""
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "model_channels"):
        return {}
    out: dict[str, Any] = {
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "model_channels": config.model_channels,
        "channel_mult": list(config.channel_mult),
        "num_res_blocks": list(config.num_res_blocks),
        "transformer_depth": list(config.transformer_depth),
        "transformer_depth_output": list(config.transformer_depth_output),
        "transformer_depth_middle": config.transformer_depth_middle,
        "context_dim": config.context_dim,
        "num_heads": -1 if config.num_heads is None else config.num_heads,
        "num_head_channels": -1 if config.num_head_channels is None else config.num_head_channels,
        "use_linear_in_transformer": config.use_linear_in_transformer,
        "adm_in_channels": config.adm_in_channels,
        "use_spatial_transformer": config.has_transformers,
    }
    if "dtype" not in out:
        out["dtype"] = getattr(module, "dtype", None)
    return out


class BaseModel(torch.nn.Module):
    """``ModelPatcher.model`` of a diffgraph MODEL: the UNet as ``diffusion_model`` (so ``state_dict()``
    keys read ``diffusion_model.…`` as in ComfyUI), the model sampling, latent format and config, and
    ``apply_model`` = the denoiser (sigma in, x0 estimate out). One per MODEL value; clones share the
    ``diffusion_model`` module."""

    def __init__(self, handle: Any) -> None:
        super().__init__()
        self.diffusion_model = handle.unet
        # Weak: the MODEL value keeps its view alive, not the other way round (no reference cycle that
        # would keep a model's weights past the model manager's weak references).
        self._handle = weakref.ref(handle)
        family = str(handle.family)
        self.latent_format = comfy_latent_format(family)
        self.model_type = model_type_for(family, getattr(handle.model_sampling, "prediction", "eps"))
        self.adm_channels = unet_config_dict(handle.unet).get("adm_in_channels") or 0
        self.concat_keys: tuple[str, ...] = ("mask", "masked_image") if handle.inpaint_concat else ()
        self.manual_cast_dtype: torch.dtype | None = None
        self.memory_usage_factor = 2.0 if family.startswith("sdxl") else 1.0
        self.model_config = SimpleNamespace(
            unet_config=unet_config_dict(handle.unet),
            latent_format=self.latent_format,
            sampling_settings={},
            manual_cast_dtype=None,
            memory_usage_factor=self.memory_usage_factor,
            custom_operations=None,
            scaled_fp8=None,
            optimizations={},
            unet_extra_config={},
            supported_inference_dtypes=[torch.float16, torch.bfloat16, torch.float32],
        )

    @property
    def current_patcher(self) -> Any:
        handle = self._handle()
        if handle is None:
            raise RuntimeError(
                "this model object outlived its MODEL value (keep the ModelPatcher, not .model)"
            )
        return handle

    @property
    def model_sampling(self) -> Any:
        return self.current_patcher.get_model_object("model_sampling")

    @model_sampling.setter
    def model_sampling(self, value: Any) -> None:
        # Packs that assign it directly mean ComfyUI's object patch.
        self.current_patcher.add_object_patch("model_sampling", value)

    @property
    def device(self) -> torch.device:
        for p in self.diffusion_model.parameters():
            return p.device
        return torch.device("cpu")

    def get_dtype(self) -> torch.dtype:
        return getattr(self.diffusion_model, "dtype", torch.float32)

    def apply_model(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: torch.Tensor | None = None,
        c_crossattn: torch.Tensor | None = None,
        control: Any = None,
        transformer_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        dm = self.current_patcher.diffusion_model()
        return dm.apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.apply_model(*args, **kwargs)

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_out(latent)

    def scale_latent_inpaint(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        return self.model_sampling.noise_scaling(sigma.reshape(-1), noise, latent_image)

    def encode_adm(self, **kwargs: Any) -> torch.Tensor | None:
        builder = self.current_patcher.adm_builder
        if builder is None:
            return None
        return builder(kwargs, int(kwargs.get("width", 1024)), int(kwargs.get("height", 1024)))

    def memory_required(self, input_shape: Any, cond_shapes: Any = None) -> float:
        """Activation bytes for a batch of ``input_shape`` (ComfyUI's estimate: 0.01 MiB per latent pixel
        and dtype byte, times the family's memory factor)."""
        area = input_shape[0] * math.prod(input_shape[2:])
        dtype_size = torch.tensor([], dtype=self.get_dtype()).element_size()
        return area * dtype_size * 0.01 * self.memory_usage_factor * (1024 * 1024)


class SDXL(BaseModel):
    pass


class SDXLRefiner(BaseModel):
    pass


class SD21UNCLIP(BaseModel):
    pass


class SD3(BaseModel):
    pass


class Flux(BaseModel):
    pass


BASE_MODEL_CLASSES: dict[str, type[BaseModel]] = {
    "sdxl": SDXL,
    "sdxl_refiner": SDXLRefiner,
    "sd3": SD3,
    "flux": Flux,
}


def base_model_for(handle: Any) -> BaseModel:
    return BASE_MODEL_CLASSES.get(str(handle.family), BaseModel)(handle)


# What a conditioning evaluation outside the guidance keeps of a MODEL's options: the UNet patches and
# the unet function wrapper, not the guidance hooks (those call this, and must not run again).
_MODEL_CALL_OPTIONS = ("transformer_options", "model_function_wrapper")


def calc_cond_batch(
    model: BaseModel, conds: Any, x: torch.Tensor, sigma: torch.Tensor, model_options: Any = None
) -> list[torch.Tensor]:
    """ComfyUI's ``comfy.samplers.calc_cond_batch`` for the model object guidance hooks receive
    (``args["model"]``): the x0 estimate of each CONDITIONING in ``conds`` (zeros for None) at ``sigma``,
    with ``model_options``' UNet patches (e.g. perturbed-attention guidance replaces an attention)."""
    from engine.diffusion.sampling.guidance import CFGDenoiser

    options = {k: v for k, v in dict(model_options or {}).items() if k in _MODEL_CALL_OPTIONS}
    dm = model.current_patcher.diffusion_model()
    out: list[torch.Tensor] = []
    for cond in conds:
        if cond is None:
            out.append(torch.zeros_like(x))
            continue
        out.append(CFGDenoiser(dm, cond, None, 1.0, like=x, model_options=options)(x, sigma))
    return out
