"""comfy.latent_formats for custom packs (see engine.handles.comfy_surface.latents: diffgraph's
LATENTs are raw VAE latents, as ComfyUI's, and process_in / process_out are ComfyUI's formulas)."""

from engine.handles.comfy_surface.latents import (
    LTXV,
    SC_B,
    SD3,
    SD15,
    SD_X4,
    SDXL,
    ACEAudio,
    Cosmos1CV8x8x8,
    Flux,
    HunyuanImage21,
    HunyuanVideo,
    LatentFormat,
    Mochi,
    SC_Prior,
    SDXL_Playground_2_5,
    StableAudio1,
    Wan21,
    Wan22,
)

__all__ = [
    "LTXV",
    "SC_B",
    "SD3",
    "SD15",
    "SD_X4",
    "SDXL",
    "ACEAudio",
    "Cosmos1CV8x8x8",
    "Flux",
    "HunyuanImage21",
    "HunyuanVideo",
    "LatentFormat",
    "Mochi",
    "SC_Prior",
    "SDXL_Playground_2_5",
    "StableAudio1",
    "Wan21",
    "Wan22",
]
