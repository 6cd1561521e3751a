"""Super-resolution models: ESRGAN / Real-ESRGAN (RRDBNet) and Real-ESRGAN's compact SRVGG network,
with architecture detection from the state dict and seam-free tiled inference."""

from .detect import UpscalerSpec, detect_upscaler, load_upscaler, load_upscaler_file
from .rrdbnet import RRDBNet
from .srvgg import SRVGGNetCompact
from .tiled import upscale_tiled

__all__ = [
    "RRDBNet",
    "SRVGGNetCompact",
    "UpscalerSpec",
    "detect_upscaler",
    "load_upscaler",
    "load_upscaler_file",
    "upscale_tiled",
]
