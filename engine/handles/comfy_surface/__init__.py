"""ComfyUI's object surface on diffgraph's model values (the "model layer" custom packs program against).

ModelHandle, ClipHandle and VAEHandle take ComfyUI's ModelPatcher / CLIP / VAE methods from the mixins
here (`patcher.py`, `clip_vae.py`): `model_options` and its patch setters, `model.model` as a BaseModel
(`base_model.py`) with `model_sampling` (`model_sampling.py`) and `latent_format` (`latents.py`), wrappers
and callbacks (`extension.py`), operations classes (`ops.py`), attention functions (`attention.py`),
loading a UNet with a pack's layers (`loading.py`), the ldm / DiT helpers (`ldm.py`, `dit.py`) and the
TAESD names (`taesd.py`, re-exporting engine.diffusion.models.taesd). It sits in the handles layer (diffusion + memory below it, nothing above);
engine/comfy_compat/env/comfy/* re-export it under ComfyUI's module names.
"""
