"""The variants' extra UNet inputs: what the denoiser concatenates (IP2P: the raw image latent; depth: the
normalised depth map; x4: the noised low-res image) and the x4 upscaler's class label, latent format,
noise schedule and UNet (class embedding, attn1 on the text)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.diffusion.models import latent_formats
from engine.diffusion.models.unet import UNetModel
from engine.diffusion.models.unet_blocks import BasicTransformerBlock
from engine.diffusion.sampling.diffusion_model import DiffusionModel
from engine.diffusion.sampling.guidance import CFGDenoiser
from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from engine.diffusion.sampling.unet_variants import concat_variant, variant_model_sampling
from engine.handles.loading import load_checkpoint_handles
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.unet_variants import write_variant_checkpoint, x4_unet_config


class Recorder(torch.nn.Module):
    """A stand-in network that records what the denoiser feeds it (the inputs are the point here)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[dict[str, torch.Tensor | None]] = []

    def forward(self, x, t, context=None, y=None, control=None, transformer_options=None):  # type: ignore[no-untyped-def]
        self.calls.append({"x": x, "y": y})
        return x[:, :4] * 0


def _denoise(
    variant: str, opts: dict, like: torch.Tensor, seed: int | None = None
) -> dict[str, torch.Tensor | None]:
    net = Recorder()
    dm = DiffusionModel(net, ModelSamplingDiscrete("eps"), variant=concat_variant(variant))
    dm.latent_format = latent_formats.SD15
    dm.seed = seed  # what KSampler sets
    CFGDenoiser(dm, [[torch.zeros(1, 3, 8), opts]], None, 1.0, like=like)(like, torch.tensor([1.0]))
    return net.calls[-1]


def test_ip2p_concatenates_the_raw_image_latent():
    like = torch.zeros(2, 4, 6, 8)
    image = torch.randn(1, 4, 6, 8)
    call = _denoise("ip2p", {"concat_latent_image": image}, like)
    x = call["x"]
    assert x.shape == (2, 8, 6, 8)
    # Not scaled by the latent format (ComfyUI's IP2P.concat_cond; the IP2P paper trains on the mode).
    assert torch.equal(x[:, 4:], image.expand(2, -1, -1, -1))
    assert torch.equal(_denoise("ip2p", {}, like)["x"][:, 4:], torch.zeros(2, 4, 6, 8))
    resized = _denoise("ip2p", {"concat_latent_image": torch.randn(1, 4, 3, 4)}, like)["x"]
    assert resized.shape == (2, 8, 6, 8)


def test_depth_map_is_resized_and_normalised_per_image():
    like = torch.zeros(1, 4, 4, 4)
    depth = torch.linspace(0, 10, 64).reshape(1, 8, 8)
    d = _denoise("depth", {"concat_depth": depth}, like)["x"][:, 4:]
    assert d.shape == (1, 1, 4, 4)
    assert d.min().item() == pytest.approx(-1.0) and d.max().item() == pytest.approx(1.0)
    # An IMAGE (B, H, W, C) gives the same from its first channel; no depth: zeros.
    image = depth.unsqueeze(-1).expand(-1, -1, -1, 3)
    assert torch.allclose(_denoise("depth", {"concat_depth": image}, like)["x"][:, 4:], d)
    assert torch.equal(_denoise("depth", {}, like)["x"][:, 4:], torch.zeros(1, 1, 4, 4))


def test_x4_upscaler_concat_and_noise_level():
    like = torch.zeros(1, 4, 8, 8)
    low = torch.rand(1, 3, 8, 8) * 2 - 1
    clean = _denoise("x4_upscaler", {"concat_image": low, "noise_augmentation": 0.0}, like)
    assert torch.equal(clean["x"][:, 4:], low)
    assert clean["y"].dtype == torch.long and clean["y"].tolist() == [0]
    noisy = _denoise("x4_upscaler", {"concat_image": low, "noise_augmentation": 0.2}, like)
    level = round(350 * 0.2)
    assert noisy["y"].tolist() == [level]
    # q_sample on the x4 model's linear low-scale schedule: sqrt(ab) x + sqrt(1 - ab) n.
    betas = torch.linspace(1e-4**0.5, 2e-2**0.5, 1000, dtype=torch.float64) ** 2
    ab = float(torch.cumprod(1 - betas, 0)[level])
    noise = (noisy["x"][:, 4:] - ab**0.5 * low) / (1 - ab) ** 0.5
    assert noise.std().item() == pytest.approx(1.0, abs=0.25)
    # With the sampler's seed: ComfyUI's draw, torch.randn on the CPU seeded with seed - 10.
    seeded = _denoise("x4_upscaler", {"concat_image": low, "noise_augmentation": 0.2}, like, seed=25)
    want = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(15))
    assert torch.allclose(seeded["x"][:, 4:], ab**0.5 * low + (1 - ab) ** 0.5 * want, atol=1e-6)
    # No image: zeros, as ComfyUI's SD_X4Upscaler.
    assert torch.equal(_denoise("x4_upscaler", {}, like)["x"][:, 4:], torch.zeros(1, 3, 8, 8))


def test_x4_unet_uses_its_class_embedding_and_text_in_attn1():
    torch.manual_seed(0)
    unet = UNetModel(x4_unet_config()).eval()
    x = torch.randn(1, 7, 8, 8)
    ctx = torch.randn(1, 5, 32)
    with torch.no_grad():
        a = unet(x, torch.tensor([500.0]), ctx, y=torch.tensor([0]))
        b = unet(x, torch.tensor([500.0]), ctx, y=torch.tensor([300]))
        c = unet(x, torch.tensor([500.0]), ctx, y=torch.tensor([300.0]))  # float labels index the same
    assert a.shape == (1, 4, 8, 8)
    assert (a - b).abs().max() > 1e-4
    assert torch.equal(b, c)
    # The level-1 transformer's attn1 reads the 32-wide text context.
    block = unet.input_blocks[3][1].transformer_blocks[0]
    assert block.disable_self_attn and block.attn1.to_k.in_features == 32


def test_disabled_self_attention_block_matches_a_hand_computation():
    torch.manual_seed(1)
    block = BasicTransformerBlock(16, 2, 8, 12, disable_self_attn=True).eval()
    x, ctx = torch.randn(1, 6, 16), torch.randn(1, 3, 12)
    with torch.no_grad():
        h = x + block.attn1(block.norm1(x), ctx)
        h = h + block.attn2(block.norm2(h), ctx)
        want = h + block.ff(block.norm3(h))
        assert torch.allclose(block(x, ctx), want, atol=1e-6)
        # The patched path (any ComfyUI patch present) computes the same.
        assert torch.allclose(block(x, ctx, {"patches": {"middle_patch": []}}), want, atol=1e-6)


def test_x4_model_sampling_uses_the_linear_schedule():
    ms = variant_model_sampling("x4_upscaler", "v")
    assert isinstance(ms, ModelSamplingDiscrete) and ms.prediction == "v"
    betas = torch.linspace(1e-4**0.5, 0.02**0.5, 1000, dtype=torch.float64) ** 2
    ab = torch.cumprod(1 - betas, 0)
    assert ms.sigmas[-1].item() == pytest.approx(math.sqrt((1 - ab[-1]) / ab[-1]), rel=1e-5)
    assert variant_model_sampling("ip2p", "eps") is None


@pytest.fixture(scope="module")
def manager() -> ModelManager:
    return ModelManager(select_device(MemoryOptions()))


@pytest.mark.slow
def test_x4_handle_has_the_x4_latent_format_and_schedule(tmp_path, manager):
    path = write_variant_checkpoint(tmp_path / "x4.safetensors", "x4_upscaler")
    model, clip, vae = load_checkpoint_handles(path, manager=manager)
    assert model.variant == "x4_upscaler" and model.family == "sd2_v"
    assert model.latent_format is latent_formats.SD_X4
    assert model.model_sampling.sigmas[-1].item() == pytest.approx(
        variant_model_sampling("x4_upscaler", "v").sigmas[-1].item()
    )
    assert vae.downscale == 4 and model.vae_downscale == 4
    assert model.clone().diffusion_model().variant.name == "x4_upscaler"


def test_ip2p_keeps_the_family_label_vector():
    # SDXL InstructPix2Pix: 8 input channels and SDXL's ADM vector.
    net = Recorder()
    adm = torch.arange(6.0).reshape(1, 6)
    dm = DiffusionModel(
        net, ModelSamplingDiscrete("eps"), adm_builder=lambda c, w, h: adm, variant=concat_variant("ip2p")
    )
    like = torch.zeros(1, 4, 4, 4)
    CFGDenoiser(dm, [[torch.zeros(1, 3, 8), {}]], None, 1.0, like=like)(like, torch.tensor([1.0]))
    assert torch.equal(net.calls[-1]["y"], adm) and net.calls[-1]["x"].shape == (1, 8, 4, 4)
