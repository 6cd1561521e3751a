"""ComfyUI's comfy.diffusers_convert for custom packs: diffusers <-> original key layouts, with diffgraph's
converters (engine.diffusion.checkpoints.diffusers_layout)."""

from __future__ import annotations

from typing import Any

from engine.diffusion.checkpoints import diffusers_layout as _layout


def convert_vae_state_dict(vae_state_dict: dict[str, Any]) -> dict[str, Any]:
    """A diffusers-layout VAE state dict in the original (LDM) layout."""
    return _layout.vae_diffusers_to_original(vae_state_dict)


def convert_unet_state_dict(unet_state_dict: dict[str, Any]) -> dict[str, Any]:
    """A diffusers-layout UNet state dict in the original (LDM) layout."""
    return _layout.unet_diffusers_to_original(unet_state_dict)


def load_diffusers(
    model_path: str,
    output_vae: bool = True,
    output_clip: bool = True,
    embedding_directory: Any = None,
    **_: Any,
) -> tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE) of a diffusers folder (an old ComfyUI name for DiffusersLoader's loading)."""
    import comfy.sd  # type: ignore[import-not-found]

    model, clip, vae, _clipvision = comfy.sd.load_checkpoint_guess_config(
        model_path, output_vae=output_vae, output_clip=output_clip, embedding_directory=embedding_directory
    )
    return model, clip, vae
