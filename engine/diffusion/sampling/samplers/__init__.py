"""Sampler functions, one module per family. Import the family modules directly, or build the
default registry with ``engine.diffusion.sampling.registry.default_sampler_registry()``."""
