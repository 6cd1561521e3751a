"""ComfyUI-surface UNet loading (comfy.sd.load_diffusion_model_state_dict, plain and with a pack's
custom_operations) keeps the UNet variant the checkpoint loaders find: an InstructPix2Pix or SD2-depth
UNet gets its extra input channels (the variant's concat) and schedule, as engine.handles.loading does."""

from __future__ import annotations

import pytest

from engine.comfy_compat.sd_bridge import diffusion_model_from_state_dict
from engine.diffusion.models.unet import UNetConfig
from engine.execution.context import MODEL_MANAGER
from engine.handles.comfy_surface.ops import manual_cast
from engine.memory.devices import DeviceInfo
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import random_state_dict, unet_shapes

# UNet-only state dicts name their family through the cross-attention width alone: SD1's 768, SD2's 1024.
CONFIGS = {
    "ip2p": UNetConfig.tiny(in_channels=8, context_dim=768),
    "depth": UNetConfig.tiny_sd2(in_channels=5, context_dim=1024),
}


@pytest.mark.parametrize("variant", ["ip2p", "depth"])
@pytest.mark.parametrize("operations", [None, manual_cast])
def test_state_dict_loading_keeps_the_unet_variant(variant, operations) -> None:
    sd = {
        "model.diffusion_model." + k: v
        for k, v in random_state_dict(unet_shapes(CONFIGS[variant]), seed=1).items()
    }
    services = {MODEL_MANAGER: ModelManager(DeviceInfo.cpu())}
    options = {"custom_operations": operations} if operations is not None else None
    handle = diffusion_model_from_state_dict(services, sd, options)
    assert handle.variant == variant
    assert handle.diffusion_model().variant is not None  # the extra input channels are built
