"""Model architectures of the Stable Diffusion family (UNet, VAE, ControlNet, T2I-Adapter, upscalers)
in plain torch: a config dataclass, modules whose parameter names are the checkpoint keys, forward
passes. Nothing here reads files or infers configs from weights: that is ``engine.diffusion.checkpoints``.

Import the submodules directly (``engine.diffusion.models.unet``, ``.vae``, ``.sdxl_conditioning``);
this package file stays empty so that importing it does not pull in torch.
"""
