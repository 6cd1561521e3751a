"""ComfyUI's model-layer building blocks for packs: layer operations (comfy.ops) and a UNet built with a
pack's operations, model-sampling classes as packs combine them, patcher-extension wrappers, latent formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.diffusion.models.unet import UNetConfig, UNetModel
from engine.diffusion.sampling.model_sampling import (
    ModelSamplingDiscrete,
    ModelSamplingFlux,
    sd3_model_sampling,
)
from engine.handles import ModelHandle, load_checkpoint_handles
from engine.handles.comfy_surface import model_sampling as ms
from engine.handles.comfy_surface.base_model import ModelType
from engine.handles.comfy_surface.dit import FeedForward, apply_rope, rms_norm, rope
from engine.handles.comfy_surface.extension import WrapperExecutor, merge_nested_dicts
from engine.handles.comfy_surface.latents import SDXL, Flux
from engine.handles.comfy_surface.loading import load_unet_with_operations
from engine.handles.comfy_surface.ops import disable_weight_init, manual_cast, use_operations
from engine.handles.comfy_surface.taesd import TAESD, Block
from engine.memory.devices import DeviceInfo
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint


def test_manual_cast_layers_compute_in_the_input_dtype() -> None:
    layer = manual_cast.Linear(4, 3, dtype=torch.float16)
    layer.weight.data = torch.randn(3, 4).half()
    layer.bias.data = torch.randn(3).half()
    x = torch.randn(2, 4, dtype=torch.float64)
    out = layer(x)
    assert out.dtype == torch.float64
    assert torch.equal(out, F.linear(x, layer.weight.double(), layer.bias.double()))
    plain = disable_weight_init.Linear(4, 3)
    # disable_weight_init leaves the parameters uninitialised (torch.empty): give them finite values, or
    # a NaN in that memory survives `w * 0.0` and the check below fails at random.
    generator = torch.Generator().manual_seed(0)
    plain.weight.data = torch.randn(3, 4, generator=generator)
    plain.bias.data = torch.randn(3, generator=generator)
    plain.weight_function = [lambda w: w * 0.0]
    assert torch.count_nonzero(plain(torch.randn(1, 4)) - plain.bias) == 0
    conv = disable_weight_init.conv_nd(2, 3, 5, 3, padding=1)
    assert isinstance(conv, torch.nn.Conv2d) and conv(torch.randn(1, 3, 4, 4)).shape == (1, 5, 4, 4)


class _CountingOps(manual_cast):
    """A pack's operations: Linear weights stored in float16, computed in the input's dtype."""

    calls = 0

    class Linear(manual_cast.Linear):
        def forward_comfy_cast_weights(self, input, *args, **kwargs):
            _CountingOps.calls += 1
            return super().forward_comfy_cast_weights(input, *args, **kwargs)


def test_unet_built_with_pack_operations_matches_the_plain_unet(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = UNetModel(UNetConfig.tiny()).eval()
    stored = {
        k: v.half() if k.endswith("weight") and v.ndim == 2 else v for k, v in plain.state_dict().items()
    }
    plain.load_state_dict({k: v.float() for k, v in stored.items()})
    manager = ModelManager(DeviceInfo.cpu())
    model = load_unet_with_operations(stored, _CountingOps, manager=manager, name="tiny")
    assert isinstance(model, ModelHandle) and model.family == "sd1"
    unet = model.unet
    assert (
        isinstance(unet.time_embed[0], _CountingOps.Linear)
        and unet.time_embed[0].weight.dtype == torch.float16
    )
    assert type(unet.input_blocks[0][0]).__name__ == "Conv2d" and unet.dtype == torch.float32
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([400.0]), torch.randn(1, 5, 32)
    _CountingOps.calls = 0
    with torch.no_grad():
        got = unet(x, t, c)
    assert _CountingOps.calls > 0
    with torch.no_grad():
        assert torch.equal(got, plain(x, t, c))


def test_use_operations_replaces_every_plain_layer() -> None:
    module = use_operations(UNetModel(UNetConfig.tiny(), device="meta"), manual_cast)
    kinds = {type(m) for m in module.modules()}
    assert not kinds & {torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm}


def test_pack_style_clone_with_class_reassignment(tmp_path: Path) -> None:
    """ComfyUI-GGUF's pattern: reassign ``__class__`` to a ModelPatcher subclass and clone."""
    path = write_tiny_checkpoint(tmp_path / "sd1.safetensors", "sd1", seed=1)
    model = load_checkpoint_handles(path, manager=ModelManager(DeviceInfo.cpu()))[0]

    class PackPatcher(ModelHandle):
        def clone(self, *args, **kwargs):
            source = self.__class__
            self.__class__ = PackPatcher
            n = super().clone(*args, **kwargs)
            n.__class__ = PackPatcher
            self.__class__ = source
            n.size = 0
            return n

    clone = PackPatcher.clone(model)
    assert type(clone) is PackPatcher and type(model) is ModelHandle
    assert clone.size == model.size > 0 and clone.backup is model.backup and clone.parent is model


def test_pack_model_sampling_classes() -> None:
    class Advanced(ms.ModelSamplingDiscrete, ms.V_PREDICTION):
        pass

    adv = Advanced()
    ours = ModelSamplingDiscrete("v")
    assert adv.prediction == "v" and torch.equal(adv.sigmas, ours.sigmas)
    assert adv.percent_to_sigma(0.3) == pytest.approx(ours.percent_to_sigma(0.3))
    zsnr = Advanced(zsnr=True)
    assert torch.isfinite(zsnr.sigmas).all() and zsnr.sigmas[-1] > 1000
    assert float(zsnr.sigmas[0]) == pytest.approx(float(ours.sigmas[0]), rel=1e-4)
    flow = ms.model_sampling_for_type(
        type("Cfg", (), {"sampling_settings": {"shift": 3.0}})(), ModelType.FLOW
    )
    assert torch.allclose(flow.sigmas, sd3_model_sampling(3.0).sigmas) and isinstance(flow, ms.CONST)
    assert isinstance(ModelSamplingFlux(), ms.ModelSamplingFlux) and isinstance(ModelSamplingFlux(), ms.CONST)
    assert not isinstance(ModelSamplingFlux(), ms.ModelSamplingDiscreteFlow)
    assert isinstance(ours, ms.EPS) and isinstance(ours, ms.ModelSamplingDiscrete)
    with pytest.raises(NotImplementedError):
        ms.ModelSamplingContinuousEDM()


def test_wrapper_executor_runs_wrappers_outside_in() -> None:
    order: list[str] = []

    def outer(executor, x):
        order.append("outer")
        return executor(x + 1) * 2

    def inner(executor, x):
        order.append("inner")
        return executor(x * 10)

    result = WrapperExecutor.new_executor(lambda x: x - 3, [outer, inner]).execute(1)
    assert result == ((1 + 1) * 10 - 3) * 2 and order == ["outer", "inner"]
    merged = merge_nested_dicts({"a": {"x": [1]}, "b": [1]}, {"a": {"x": [2], "y": 3}, "b": [2]})
    # ComfyUI's order: top-level lists extend the first dict's, nested ones the second's.
    assert merged == {"a": {"x": [2, 1], "y": 3}, "b": [1, 2]}


def test_latent_formats_keep_comfyui_values_and_transforms() -> None:
    """LATENTs are raw VAE latents, so process_in / process_out are ComfyUI's scale (and shift) formulas."""
    latent = torch.randn(1, 4, 2, 2)
    assert SDXL.scale_factor == 0.13025
    torch.testing.assert_close(SDXL().process_in(latent), latent * 0.13025)
    torch.testing.assert_close(SDXL().process_out(latent * 0.13025), latent)
    assert Flux.latent_channels == 16 and Flux.shift_factor == 0.1159
    torch.testing.assert_close(Flux().process_in(latent), (latent - 0.1159) * 0.3611)
    torch.testing.assert_close(Flux().process_out(latent), latent / 0.3611 + 0.1159)


def test_rope_rotates_consecutive_pairs_like_complex_multiplication() -> None:
    pos = torch.arange(5.0)[None]  # (1, 5)
    pe = rope(pos, 8, 10000)  # (1, 5, 4, 2, 2)
    x = torch.randn(1, 5, 8)
    got, _ = apply_rope(x, x, pe)
    freqs = 1.0 / 10000 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angles = pos.double()[..., None] * freqs  # (1, 5, 4)
    expected = torch.view_as_real(
        torch.view_as_complex(x.double().reshape(1, 5, 4, 2)) * torch.polar(torch.ones_like(angles), angles)
    )
    assert torch.allclose(got.double(), expected.reshape(1, 5, 8), atol=1e-5)
    ff = FeedForward(8, 20, multiple_of=16, ffn_dim_multiplier=None)
    assert ff.w1.out_features == 32 and ff(torch.randn(2, 8)).shape == (2, 8)
    y = torch.randn(3, 8)
    assert torch.allclose(rms_norm(y), y / y.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt(), atol=1e-6)


def test_taesd_layout_follows_the_published_weights() -> None:
    model = TAESD()
    decoder_keys = set(model.taesd_decoder.state_dict())
    assert len(model.taesd_encoder) == 15 and len(model.taesd_decoder) == 20
    assert {"1.weight", "3.conv.4.weight", "7.weight", "19.bias"} <= decoder_keys
    assert "3.skip.weight" not in decoder_keys and "skip.weight" in Block(3, 8).state_dict()
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.Conv2d):
                torch.nn.init.normal_(layer.weight, std=0.05)
                if layer.bias is not None:
                    torch.nn.init.zeros_(layer.bias)
        assert model.decode(torch.zeros(1, 4, 2, 2)).shape == (1, 3, 16, 16)
        assert model.encode(torch.zeros(1, 3, 16, 16)).shape == (1, 4, 2, 2)
