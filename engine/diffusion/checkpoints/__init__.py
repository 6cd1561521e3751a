"""Checkpoint files: reading, family detection, diffusers layout conversion, loading, tiny test files.

Import the submodules directly (``engine.diffusion.checkpoints.loader``); this package file stays
light so that importing it never pulls in model code.
"""
