"""End to end with tiny random-weight checkpoints in the real file format: load → encode prompts →
sample → VAE decode, through the same functions the KSampler nodes call.

Random weights produce meaningless pictures, so the checks are structural: reproducibility,
img2img distance ordering, inpainting leaves the unmasked latent untouched, SD-Turbo-style one-step
sampling makes one UNet call, SDXL's ADM vector and 9-channel inpainting UNets are wired up.
"""

from __future__ import annotations

import pytest
import torch

import engine.diffusion.checkpoints.loader as loader
import engine.diffusion.models.sdxl_conditioning as sdxl_cond
import tests.factories.checkpoints as synthetic
from engine.diffusion.sampling.diffusion_model import DiffusionModel  # noqa: E402
from engine.diffusion.sampling.guidance import CFGDenoiser  # noqa: E402
from engine.diffusion.sampling.ksampler import prepare_noise, sample, sample_custom  # noqa: E402
from engine.diffusion.sampling.model_sampling import model_sampling_for  # noqa: E402
from engine.diffusion.sampling.registry import default_sampler_registry  # noqa: E402
from engine.diffusion.sampling.schedulers import sd_turbo_sigmas  # noqa: E402

pytestmark = pytest.mark.slow


def sdxl_adm_builder(cond, width, height):
    return sdxl_cond.sdxl_adm(
        cond["pooled_output"],
        width=cond.get("width", width), height=cond.get("height", height),
        crop_w=cond.get("crop_w", 0), crop_h=cond.get("crop_h", 0),
        target_width=cond.get("target_width", width), target_height=cond.get("target_height", height),
    )  # fmt: skip


def to_model(ck) -> DiffusionModel:
    """The glue the loader node will do: pick the model sampling and family hooks from the spec."""
    spec = ck.spec
    return DiffusionModel(
        ck.unet,
        model_sampling_for(spec.prediction_type),
        adm_builder=sdxl_adm_builder if spec.family == "sdxl" else None,
        inpaint_concat=spec.is_inpaint,
    )


def encode(ck, text):
    c, pooled = ck.text_encoder.encode(text)
    return [[c, {} if pooled is None else {"pooled_output": pooled}]]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name, fam, inpaint in [
        ("sd1", "sd1", False),
        ("sd1_inpaint", "sd1", True),
        ("sdxl", "sdxl", False),
        ("sd2_v", "sd2_v", False),
    ]:
        path = synthetic.write_tiny_checkpoint(root / f"{name}.safetensors", fam, seed=1, inpaint=inpaint)
        out[name] = loader.load_checkpoint(path)
    return out


@pytest.fixture(scope="module")
def px(ckpts):
    """Image side for an 8x8 latent (the tiny VAE downsamples by 2, real ones by 8)."""
    return 8 * ckpts["sd1"].vae.config.downscale


@pytest.fixture(scope="module")
def image(px):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, px, px, generator=g) * 2 - 1
    return torch.nn.functional.avg_pool2d(img, 3, 1, 1)  # a little smoothness


def test_txt2img_decode_and_seeds(ckpts, px, regs):
    ck = ckpts["sd1"]
    model = to_model(ck)
    pos, neg = encode(ck, "a photo of a cat"), encode(ck, "")
    lat = torch.zeros(1, 4, 8, 8)
    run = lambda seed: sample(model, None, 4, 6.0, "dpmpp_2m", "karras", pos, neg, lat, seed=seed, **regs)  # noqa: E731
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    img = ck.vae.decode(a)
    assert img.shape == (1, 3, px, px) and torch.isfinite(img).all()
    assert torch.equal(img, ck.vae.decode(b))


def test_img2img_denoise_half_stays_closer(ckpts, image, regs):
    ck = ckpts["sd1"]
    model = to_model(ck)
    pos, neg = encode(ck, "a red house"), encode(ck, "")
    src = ck.vae.encode(image)
    d = {}
    for denoise in (0.5, 1.0):
        out = sample(model, None, 6, 5.0, "euler", "normal", pos, neg, src, denoise=denoise, seed=3, **regs)
        d[denoise] = (out - src).abs().mean().item()
    assert d[0.5] < d[1.0]


def test_inpainting_keeps_unmasked_latent_and_pixels_mostly(ckpts, image, px, regs):
    ck = ckpts["sd1"]
    model = to_model(ck)
    pos, neg = encode(ck, "a dog"), encode(ck, "")
    src = ck.vae.encode(image)
    mask = torch.zeros(1, px, px)
    q = px // 4
    mask[:, q : 3 * q, q : 3 * q] = 1.0  # centre, pixel resolution
    out = sample(
        model, None, 5, 5.0, "dpmpp_2m_sde", "karras", pos, neg, src, noise_mask=mask, seed=7, **regs
    )
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[1:7, 1:7] = False  # latent pixels untouched by the (bilinearly resized) mask
    assert torch.equal(out[..., keep], src[..., keep])
    assert not torch.allclose(out[..., 3:5, 3:5], src[..., 3:5, 3:5])
    # In pixels: outside the mask the result differs from the plain VAE round trip of the input much
    # less than inside (a random VAE's mid-block attention lets every latent touch every pixel).
    ref = ck.vae.decode(src)
    diff = (ck.vae.decode(out) - ref).abs().mean(dim=1)[0]
    outside = torch.ones(px, px, dtype=torch.bool)
    outside[px // 8 : px - px // 8, px // 8 : px - px // 8] = False
    c = slice(3 * px // 8, 5 * px // 8)
    assert diff[outside].mean() < diff[c, c].mean()


def test_nine_channel_inpainting_model(ckpts, image, px, regs):
    ck = ckpts["sd1_inpaint"]
    assert ck.spec.is_inpaint
    model = to_model(ck)
    pos, neg = encode(ck, "a cat"), encode(ck, "")
    src = ck.vae.encode(image)
    mask = torch.zeros(1, px, px)
    mask[:, :, px // 2 :] = 1.0
    out = sample(model, None, 3, 4.0, "euler", "normal", pos, neg, src, noise_mask=mask, seed=1, **regs)
    assert torch.isfinite(out).all()
    # kept to float rounding (Euler's last step lands on the x0 estimate, which is the input there)
    torch.testing.assert_close(out[..., :3], src[..., :3], atol=1e-5, rtol=0)
    # txt2img with an inpainting model (no mask) also works: mask channel = 1, blank masked image.
    out2 = sample(model, None, 2, 4.0, "euler", "normal", pos, neg, torch.zeros(1, 4, 8, 8), seed=1, **regs)
    assert torch.isfinite(out2).all()


def test_sd_turbo_style_one_step(ckpts):
    ck = ckpts["sd1"]
    model = to_model(ck)
    calls = []
    hook = ck.unet.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    try:
        lat = torch.zeros(1, 4, 8, 8)
        guider = CFGDenoiser(model, encode(ck, "a cat"), None, 1.0, like=lat)
        sigmas = sd_turbo_sigmas(model.model_sampling, 1)
        spec = default_sampler_registry().get("euler_ancestral")
        out = sample_custom(guider, spec, sigmas, prepare_noise(lat, 5), lat, seed=5)
    finally:
        hook.remove()
    assert calls == [1] and torch.isfinite(out).all()


def test_sdxl_and_v_prediction_models(ckpts, regs):
    for name in ("sdxl", "sd2_v"):
        ck = ckpts[name]
        model = to_model(ck)
        assert model.model_sampling.prediction == ("v" if name == "sd2_v" else "eps")
        pos, neg = encode(ck, "a castle"), encode(ck, "blurry")
        lat = torch.zeros(2, 4, 8, 8)
        out = sample(model, None, 3, 5.0, "euler_ancestral", "sgm_uniform", pos, neg, lat, seed=2, **regs)
        assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
