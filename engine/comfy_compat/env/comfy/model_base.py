"""comfy.model_base for custom packs: the model classes a MODEL's ``.model`` is an instance of
(BaseModel; SDXL, SDXLRefiner, SD3, Flux for those families), ModelType, model_sampling()."""

import torch

from engine.handles.comfy_surface.base_model import (
    SD3,
    SD21UNCLIP,
    SDXL,
    BaseModel,
    Flux,
    ModelType,
    SDXLRefiner,
)
from engine.handles.comfy_surface.model_sampling import model_sampling_for_type as model_sampling

__all__ = ["SD3", "SDXL", "BaseModel", "Flux", "ModelType", "SD21UNCLIP", "SDXLRefiner", "model_sampling"]


# Families diffgraph does not run, named for packs that import or test them.
class SVD_img2vid(BaseModel): ...


class SV3D_u(SVD_img2vid): ...


class SV3D_p(SVD_img2vid): ...


class Stable_Zero123(BaseModel): ...


class SD_X4Upscaler(BaseModel): ...


class IP2P: ...


class SD15_instructpix2pix(IP2P, BaseModel): ...


class SDXL_instructpix2pix(IP2P, SDXL): ...


class StableCascade_C(BaseModel): ...


class StableCascade_B(BaseModel): ...


class AuraFlow(BaseModel): ...


class StableAudio1(BaseModel): ...


class HunyuanDiT(BaseModel): ...


class PixArt(BaseModel): ...


class GenmoMochi(BaseModel): ...


class LTXV(BaseModel): ...


class HunyuanVideo(BaseModel): ...


class CosmosVideo(BaseModel): ...


class Lumina2(BaseModel): ...


class WAN21(BaseModel): ...


class WAN22(WAN21): ...


class HiDream(BaseModel): ...


class Chroma(Flux): ...


class QwenImage(BaseModel): ...


def convert_tensor(extra, dtype, device):
    if hasattr(extra, "dtype"):
        if extra.dtype not in (torch.int, torch.long):
            return extra.to(device=device, dtype=dtype)
        return extra.to(device=device)
    return extra
