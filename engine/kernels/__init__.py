"""The fastest kernels per device for the few operations that dominate a diffusion step.

Pure torch, below every other engine layer (models and the memory manager use it, it imports no engine
module). `cpu_gemm` picks the CPU matrix-multiply library by measuring both (oneDNN or the BLAS torch
links, MKL on x86 builds); `layers` puts that choice into a model's Linear layers.
"""
