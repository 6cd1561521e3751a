"""Tiny random model files under the names ComfyUI's workflow templates ask for.

ComfyUI's templates (the `comfyui-workflow-templates` package) name real downloads -
`DreamShaper_8_pruned.safetensors`, `sd3.5_large_fp8_scaled.safetensors`, `flux1-dev.safetensors`, ... - in
their loader widgets. `write_template_models` writes a tiny file of the right kind and layout under each name
a template uses, so the template runs unchanged apart from sizes. Which kind a name is comes from the table
below (the templates' own `properties.models` entries say where each download goes; the table repeats the
facts a loader needs: family and layout).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.diffusion.checkpoints.spec import ModelFamily
from engine.diffusion.models import flux, mmdit
from engine.diffusion.models.controlnet import ControlNetModel
from engine.diffusion.models.upscalers import RRDBNet
from engine.diffusion.models.vae import AutoencoderKL
from tests.factories.checkpoints import tiny_family_parts, tiny_single_file_state_dict, write_tiny_checkpoint
from tests.factories.flow_checkpoints import (
    flow_file_state_dict,
    tiny_vae16_config,
    write_flow_file,
    write_text_encoder_files,
)
from tests.factories.random_weights import randomize_

Writer = Callable[[Path], None]


def _sd_checkpoint(family: str, *, inpaint: bool = False) -> Writer:
    def write(path: Path) -> None:
        write_tiny_checkpoint(path, family, seed=1, inpaint=inpaint)

    return write


def _sd_vae(path: Path) -> None:
    """A standalone SD VAE file (`vae-ft-mse-840000-ema-pruned`): the checkpoint's VAE keys, no prefix."""
    sd = tiny_single_file_state_dict(ModelFamily.SD1, seed=11)
    prefix = "first_stage_model."
    save_file({k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}, str(path))


def _sd1_lora(seed: int) -> Writer:
    """A kohya LoRA on the tiny SD1 UNet's attention projections."""

    def write(path: Path) -> None:
        from engine.diffusion.models.unet import UNetModel

        unet_cfg = tiny_family_parts(ModelFamily.SD1)[0]
        unet = UNetModel(unet_cfg, device="meta")
        g = torch.Generator().manual_seed(seed)
        lora: dict[str, torch.Tensor] = {}
        for key, weight in unet.state_dict().items():
            if key.endswith(("attn1.to_q.weight", "attn2.to_v.weight", "attn2.to_k.weight")):
                name = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
                lora[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], 2, generator=g) * 0.1
                lora[f"{name}.lora_down.weight"] = torch.randn(2, weight.shape[1], generator=g) * 0.1
                lora[f"{name}.alpha"] = torch.tensor(2.0)
        save_file(lora, str(path))

    return write


def _sd1_controlnet(seed: int) -> Writer:
    def write(path: Path) -> None:
        unet_cfg = tiny_family_parts(ModelFamily.SD1)[0]
        control = ControlNetModel(unet_cfg)
        randomize_(control, seed)
        weights = {f"control_model.{k}": v.contiguous() for k, v in control.state_dict().items()}
        save_file(weights, str(path))

    return write


def _gligen(path: Path) -> None:
    from tests.factories.unet_variants import write_gligen_file

    write_gligen_file(path, tiny_family_parts(ModelFamily.SD1)[0], seed=4)


def _clip_vision(kind: str, projection_dim: int | None = None) -> Writer:
    def write(path: Path) -> None:
        import dataclasses

        from engine.diffusion.vision.clip_vision import VisionConfig
        from tests.factories.vision import write_clip_vision

        config = VisionConfig.tiny(kind=kind)
        if projection_dim is not None:
            config = dataclasses.replace(config, projection_dim=projection_dim)
        write_clip_vision(path, config, seed=5)

    return write


def _flux_redux(path: Path) -> None:
    from tests.factories.vision import write_redux

    write_redux(path, redux_dim=32, txt_dim=flux.TINY.context_in_dim, seed=6)


# The tiny SD3.5 large (QK norm like the real one; a 64x64 position grid so 1024x1024 runs unchanged).
SD35_TINY = mmdit.TINY.replace(pos_embed_max_size=64, qk_norm=True)


def _sd35_controlnet(control_type: int, seed: int) -> Writer:
    """Stability's own SD3.5 ControlNet layout, sized for `SD35_TINY` (its patch embedding is borrowed)."""

    def write(path: Path) -> None:
        from engine.diffusion.models.mmdit_controlnet_sd35 import SD35ControlNetConfig
        from tests.factories.control_files import sd35_controlnet_state_dict

        config = SD35ControlNetConfig(
            num_blocks=2, hidden_size=SD35_TINY.hidden_size, adm_in_channels=SD35_TINY.adm_in_channels
        )
        save_file(sd35_controlnet_state_dict(config, seed=seed, control_type=control_type), str(path))

    return write


def _flux_control_lora(path: Path) -> None:
    """BFL's FLUX.1 depth LoRA layout for the tiny FLUX.1 dev (img_in widened by 16 latent channels)."""
    from tests.factories.control_files import bfl_control_lora_state_dict

    save_file(bfl_control_lora_state_dict(flux.TINY, seed=8), str(path))


def _esrgan(path: Path) -> None:
    upscaler = RRDBNet(nf=8, nb=1, gc=4, scale=4)
    randomize_(upscaler, 3)
    save_file({k: v.contiguous() for k, v in upscaler.state_dict().items()}, str(path))


def _vae16_state_dict(family: str, seed: int) -> dict[str, torch.Tensor]:
    """A 16-channel VAE that scales by 8 like the real one (four 32-channel levels): the templates' 1024
    pixel latents then decode at the real size, and the mid-block attention runs on 128x128 tokens,
    not on the 512x512 of the 2x test VAE."""
    import dataclasses

    model = AutoencoderKL(dataclasses.replace(tiny_vae16_config(family), ch_mult=(1, 1, 1, 1)))
    randomize_(model, seed)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


_VAE_PREFIX = {"sd3": "first_stage_model.", "flux": "vae."}


def _flow(family: str, *, layout: str, fp8: bool = False, config: object = None, seed: int = 1) -> Writer:
    def write(path: Path) -> None:
        if layout == "diffusion_model":
            write_flow_file(path, family, config=config, layout=layout, fp8_scaled=fp8, seed=seed)
            return
        sd = flow_file_state_dict(
            family, config=config, layout=layout, fp8_scaled=fp8, with_vae=False, seed=seed
        )
        vae = _vae16_state_dict(family, seed + 5)
        sd.update({_VAE_PREFIX[family] + k: v for k, v in vae.items()})
        save_file(sd, str(path))

    return write


def _flux_text_encoder(kind: str) -> Writer:
    """One of Flux's standalone text encoders (CLIP-L, T5-XXL fp16 / fp8-scaled)."""

    def write(path: Path) -> None:
        scratch = path.parent / f".scratch-{path.name}"
        written = write_text_encoder_files(scratch, "flux", seed=2, t5_fp8_scaled="fp8" in path.name)
        written[kind].replace(path)
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()

    return write


def _flux_ae(path: Path) -> None:
    save_file(_vae16_state_dict("flux", 2), str(path))


# file name -> (models sub-folder(s), writer)
TEMPLATE_MODELS: dict[str, tuple[str | tuple[str, ...], Writer]] = {
    # SD1.5 checkpoints (the templates use several community fine-tunes; all are SD1 files)
    **{
        name: ("checkpoints", _sd_checkpoint("sd1"))
        for name in (
            "v1-5-pruned-emaonly-fp16.safetensors",
            "DreamShaper_8_pruned.safetensors",
            "dreamshaper_8.safetensors",
            "majicmixRealistic_v7.safetensors",
            "japaneseStyleRealistic_v20.safetensors",
            "architecturerealmix_v11.safetensors",
            "awpainting_v14.safetensors",
        )
    },
    "512-inpainting-ema.safetensors": ("checkpoints", _sd_checkpoint("sd1", inpaint=True)),
    "v2-1_768-ema-pruned.safetensors": ("checkpoints", _sd_checkpoint("sd2_v")),
    "sd_xl_base_1.0.safetensors": ("checkpoints", _sd_checkpoint("sdxl")),
    "sd_xl_refiner_1.0.safetensors": ("checkpoints", _sd_checkpoint("sdxl_refiner")),
    "sd_xl_turbo_1.0_fp16.safetensors": ("checkpoints", _sd_checkpoint("sdxl")),
    "vae-ft-mse-840000-ema-pruned.safetensors": ("vae", _sd_vae),
    "MoXinV1.safetensors": ("loras", _sd1_lora(5)),
    "blindbox_v1_mix.safetensors": ("loras", _sd1_lora(6)),
    "control_v11p_sd15_openpose_fp16.safetensors": ("controlnet", _sd1_controlnet(7)),
    "control_v11p_sd15_scribble_fp16.safetensors": ("controlnet", _sd1_controlnet(8)),
    "control_v11f1p_sd15_depth_fp16.safetensors": ("controlnet", _sd1_controlnet(9)),
    "RealESRGAN_x4plus.safetensors": ("upscale_models", _esrgan),
    "gligen_sd14_textbox_pruned.safetensors": ("gligen", _gligen),
    # SDXL "revision": the image embedding stands in for the pooled text vector (the tiny SDXL's 32)
    "clip_vision_g.safetensors": ("clip_vision", _clip_vision("clip", projection_dim=32)),
    "sigclip_vision_patch14_384.safetensors": ("clip_vision", _clip_vision("siglip")),
    "flux1-redux-dev.safetensors": ("style_models", _flux_redux),
    # SD3.5 all-in-one, fp8-scaled (ComfyUI's sd3.5_large_fp8_scaled.safetensors)
    "sd3.5_large_fp8_scaled.safetensors": (
        "checkpoints",
        # QK-norm like SD3.5 large; a 64x64 position grid so the template's 1024x1024 runs unchanged
        _flow("sd3", layout="all_in_one", fp8=True, config=SD35_TINY),
    ),
    # Stability's SD3.5 large ControlNets (control_type 0 blur, 1 canny, 2 depth)
    "sd3.5_large_controlnet_blur.safetensors": ("controlnet", _sd35_controlnet(0, seed=12)),
    "sd3.5_large_controlnet_canny.safetensors": ("controlnet", _sd35_controlnet(1, seed=13)),
    "sd3.5_large_controlnet_depth.safetensors": ("controlnet", _sd35_controlnet(2, seed=14)),
    # FLUX.1 all-in-one fp8 checkpoints and split files
    # flux_depth_lora_example loads this all-in-one file with UNETLoader (ComfyUI reads its diffusion model)
    "flux1-dev-fp8.safetensors": (
        ("checkpoints", "diffusion_models"),
        _flow("flux", layout="all_in_one", config=flux.TINY),
    ),
    "flux1-schnell-fp8.safetensors": (
        "checkpoints",
        _flow("flux", layout="all_in_one", config=flux.TINY_SCHNELL, seed=3),
    ),
    "flux1-dev.safetensors": ("diffusion_models", _flow("flux", layout="diffusion_model", config=flux.TINY)),
    "flux1-krea-dev_fp8_scaled.safetensors": (
        "diffusion_models",
        _flow("flux", layout="diffusion_model", fp8=True, config=flux.TINY, seed=4),
    ),
    "flux1-schnell.safetensors": (
        "diffusion_models",
        _flow("flux", layout="diffusion_model", config=flux.TINY_SCHNELL, seed=3),
    ),
    # FLUX.1 Fill: 16 latent + 16 image + 64 mask channels, patchified 2x2 (ComfyUI's 384 at full size)
    "flux1-fill-dev.safetensors": (
        "diffusion_models",
        _flow("flux", layout="diffusion_model", config=flux.TINY.replace(in_channels=96), seed=5),
    ),
    # FLUX.1 Canny dev: latent 16 + control image latent 16 channels (ComfyUI's 128 = 32 * 2x2)
    "flux1-canny-dev.safetensors": (
        "diffusion_models",
        _flow("flux", layout="diffusion_model", config=flux.TINY.replace(in_channels=32), seed=7),
    ),
    "flux1-depth-dev-lora.safetensors": ("loras", _flux_control_lora),
    # FLUX.1 Kontext has FLUX.1 dev's layout; the reference image travels as extra tokens
    "flux1-dev-kontext_fp8_scaled.safetensors": (
        "diffusion_models",
        _flow("flux", layout="diffusion_model", fp8=True, config=flux.TINY, seed=6),
    ),
    "clip_l.safetensors": ("text_encoders", _flux_text_encoder("clip_l")),
    "t5xxl_fp16.safetensors": ("text_encoders", _flux_text_encoder("t5xxl")),
    "t5xxl_fp8_e4m3fn_scaled.safetensors": ("text_encoders", _flux_text_encoder("t5xxl")),
    "ae.safetensors": ("vae", _flux_ae),
}


def write_template_models(models: Path, names: set[str]) -> None:
    """Write the tiny file for every name in `names` (each once) into its folder(s) under `models`.
    A name the table does not know raises KeyError naming it: the template needs a writer added."""
    for name in sorted(names):
        folders, writer = TEMPLATE_MODELS[name]
        for folder in (folders,) if isinstance(folders, str) else folders:
            path = models / folder / name
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                writer(path)
