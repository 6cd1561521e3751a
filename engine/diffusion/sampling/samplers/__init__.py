"""Sampler functions, one module per family. The runtime registers them by their
ComfyUI names in ``engine.diffusion.sampling.registry.default_sampler_registry()``."""
