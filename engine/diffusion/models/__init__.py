"""Model architectures of the Stable Diffusion family (UNet, VAE) in plain torch.

Import the submodules directly (``engine.diffusion.models.unet``, ``.vae``, ``.sdxl_conditioning``);
this package file stays empty so that importing it does not pull in torch.
"""
