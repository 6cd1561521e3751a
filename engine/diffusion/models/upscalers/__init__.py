"""Super-resolution models: ESRGAN / Real-ESRGAN (RRDBNet) and Real-ESRGAN's compact SRVGG network,
with seam-free tiled inference. Reading them from files (architecture detection, the old ESRGAN key
layout) is ``engine.diffusion.checkpoints.upscalers``."""

from .rrdbnet import RRDBNet
from .srvgg import SRVGGNetCompact
from .tiled import upscale_tiled

__all__ = ["RRDBNet", "SRVGGNetCompact", "upscale_tiled"]
