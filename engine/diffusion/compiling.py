"""torch.compile for the diffusion networks (``--compile`` and the TorchCompileModel node).

A compiled network is a wrapper around the very module the model manager holds: it shares its parameters,
so weight patches (LoRA...) written into the module by the manager are what the compiled code reads on
its next call (parameters are graph inputs, not constants; inductor's "freezing" is never turned on for
that reason). The wrapper is made once per module and settings and kept on the module itself, so a
sampler run with another seed or prompt reuses it and its compiled graphs (dynamo guards only on
shapes, dtypes and the Python structure of the call; ``dynamic=False`` keeps the kernels specialised to
the latent size, and a new size compiles once more).

When compiled code is not used, and why:
- a model streamed layer by layer (partial load): the manager's per-layer hooks move weights during the
  forward pass, which compiled code would bake in;
- a VAE decode in tiles (every tile size would be another graph; tiles are the memory fallback anyway).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("inductor", "cudagraphs")
_CACHE_ATTR = "_diffgraph_compiled"  # in the module's __dict__: plain attribute, not a submodule


@dataclass(frozen=True)
class CompileSettings:
    """How to compile: ``backend`` is torch.compile's ("inductor", or "cudagraphs" on CUDA only);
    ``mode`` torch.compile's mode (None, "reduce-overhead", "max-autotune"...)."""

    backend: str = "inductor"
    mode: str | None = None
    dynamic: bool = False
    fullgraph: bool = False

    def for_device(self, device: torch.device) -> CompileSettings:
        """The settings as they can run on `device`: CUDA graphs exist only on CUDA, so elsewhere the
        "cudagraphs" backend becomes inductor (the same result, compiled for the CPU)."""
        if self.backend == "cudagraphs" and device.type != "cuda":
            return CompileSettings("inductor", None, self.dynamic, self.fullgraph)
        return self


def compiled(module: nn.Module, settings: CompileSettings) -> nn.Module:
    """The compiled twin of `module` for `settings`: made on first request, then the same object (and so
    the same compiled graphs) for every later request with equal settings."""
    cache: dict[Any, Any] = module.__dict__.setdefault(_CACHE_ATTR, {})
    twin = cache.get(settings)
    # A shallow copy of a module shares its __dict__'s cache; its twin must wrap the copy, not the original.
    if twin is None or twin._orig_mod is not module:
        log.info("compiling %s with torch.compile (%s)", type(module).__name__, settings)
        twin = torch.compile(
            module,
            backend=settings.backend,
            mode=settings.mode,
            dynamic=settings.dynamic,
            fullgraph=settings.fullgraph,
        )
        cache[settings] = twin
    return twin  # type: ignore[return-value]  # an OptimizedModule (an nn.Module) for a module argument


def compiled_twins(module: nn.Module) -> dict[Any, Any]:
    """The compiled twins made for `module` so far (for tests and statistics)."""
    return dict(module.__dict__.get(_CACHE_ATTR, {}))


def settings_for(handle: Any) -> CompileSettings | None:
    """What a model's handle asks for: its own settings (the TorchCompileModel node sets them on a clone),
    else the process-wide ``--compile`` flag (the manager's device options), else None (run eagerly)."""
    own = getattr(handle, "compile_settings", None)
    if own is not None:
        return own  # type: ignore[no-any-return]
    manager = getattr(handle, "manager", None)
    options = getattr(getattr(manager, "device_info", None), "options", None)
    if getattr(options, "compile", False):
        return CompileSettings()
    return None


def _streamed(handle: Any) -> bool:
    from engine.memory.manager import Location

    return getattr(handle, "location", None) is Location.PARTIAL


def network_for(handle: Any, module: nn.Module) -> nn.Module:
    """`module` (a handle's UNet / transformer), or its compiled twin when the handle asks for compilation
    and the module is wholly resident (see the module docstring)."""
    settings = settings_for(handle)
    if settings is None or _streamed(handle):
        return module
    return compiled(module, settings.for_device(_device_of(module)))


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


class CompiledDecode:
    """A VAE as `decode` callers see it, whose untiled decode runs compiled (`tile_size` given: the
    eager, tiled path). Other attributes are the VAE's own."""

    def __init__(self, vae: Any, settings: CompileSettings) -> None:
        self._vae = vae
        cache: dict[Any, Any] = vae.__dict__.setdefault(_CACHE_ATTR, {})
        key = ("decode", settings)
        if key not in cache or cache[key][0] is not vae:
            log.info("compiling the VAE decoder with torch.compile (%s)", settings)
            fn = torch.compile(
                vae.decode, backend=settings.backend, mode=settings.mode, dynamic=settings.dynamic
            )
            cache[key] = (vae, fn)  # the owner too: a shallow copy of the VAE must not reuse this
        self._decode = cache[key][1]

    def decode(self, latents: torch.Tensor, *, tile_size: int | None = None, tile_overlap: int = 64) -> Any:
        if tile_size is not None:
            return self._vae.decode(latents, tile_size=tile_size, tile_overlap=tile_overlap)
        return self._decode(latents)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vae, name)


def vae_for(handle: Any, vae: Any) -> Any:
    """`vae`, or a `CompiledDecode` over it when compilation is asked for (the ``--compile`` flag)."""
    settings = settings_for(handle)
    if settings is None or _streamed(handle):
        return vae
    return CompiledDecode(vae, settings.for_device(_device_of(vae)))
