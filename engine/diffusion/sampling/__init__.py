"""Sampling: noise schedules, samplers, guidance and the denoising loop (DESIGN.md §5).

Import the submodules directly (``engine.diffusion.sampling.ksampler`` etc.); this package
initialiser deliberately imports nothing so that importing it costs nothing.
"""
