"""The noise contract: a seed gives ComfyUI's noise, draw for draw.

Each expected value is computed independently of engine code: straight from ``torch.Generator`` /
``torchsde.BrownianTree`` the way ComfyUI's k-diffusion code calls them, and from small hand-written
loops of ComfyUI's per-step updates (ancestral Euler, lcm, DPM++(2M) SDE, the inpainting blend).
"""

from __future__ import annotations

import math

import pytest
import torch
import torchsde

from engine.diffusion.sampling.guidance import prepare_denoise_mask
from engine.diffusion.sampling.ksampler import prepare_noise, sample_custom
from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete
from engine.diffusion.sampling.noise import BrownianTreeNoise, GaussianNoise, inpaint_noise
from engine.diffusion.sampling.registry import default_sampler_registry
from engine.diffusion.sampling.schedulers import karras_sigmas

MS = ModelSamplingDiscrete()
SEED = 8765


def toy(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A nonlinear stand-in denoiser (any fixed function of x and sigma will do)."""
    s = sigma.view(-1, 1, 1, 1)
    return torch.tanh(x / torch.sqrt(1 + s * s)) * 0.9 + 0.05 * x.mean(dim=1, keepdim=True)


toy.model_sampling = MS  # type: ignore[attr-defined]


def sigmas(steps: int = 6) -> torch.Tensor:
    return karras_sigmas(steps, MS.sigma_min, MS.sigma_max).float()


def latent(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5


def run(name: str, lat: torch.Tensor, sig: torch.Tensor, seed: int = SEED, mask=None) -> torch.Tensor:
    spec = default_sampler_registry().get(name)
    return sample_custom(
        toy, spec, sig, prepare_noise(lat, seed), lat, noise_mask=mask, seed=seed, model_sampling=MS
    )


def ancestral(s: float, sn: float) -> tuple[float, float]:
    up = min(sn, math.sqrt(sn**2 * (s**2 - sn**2) / s**2))
    return math.sqrt(sn**2 - up**2), up


def start(noise: torch.Tensor, lat: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
    # KSampler's first noising at the top of the schedule: noise·sqrt(1 + sigma²) + latent
    return lat + noise * math.sqrt(1 + float(sig[0]) ** 2)


# ---- per-step Gaussian noise ------------------------------------------------------------------


def test_step_noise_is_the_seeded_generator_sequence():
    x = torch.zeros(2, 4, 8, 8)
    src = GaussianNoise.like(x, SEED)
    torch.manual_seed(0)  # the global RNG plays no part
    draws = [src(1.0, 0.5) for _ in range(3)]
    gen = torch.Generator().manual_seed(SEED)
    for d in draws:
        assert torch.equal(d, torch.randn(x.shape, generator=gen))
    # ComfyUI seeds the step generator with the prompt seed itself: on the CPU the first step draw
    # repeats the initial noise.
    assert torch.equal(draws[0], prepare_noise(x, SEED))
    half = GaussianNoise.like(x.half(), SEED)(1.0, 0.5)
    assert half.dtype == torch.float16
    assert torch.equal(
        half, torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED), dtype=torch.float16)
    )


def test_euler_ancestral_draws_one_generator_in_order():
    lat, sig = torch.zeros(2, 4, 8, 8), sigmas()
    noise = prepare_noise(lat, SEED)
    gen = torch.Generator().manual_seed(SEED)
    x = start(noise, lat, sig)
    for i in range(len(sig) - 1):
        s, sn = float(sig[i]), float(sig[i + 1])
        den = toy(x, sig[i].expand(2))
        down, up = ancestral(s, sn)
        if down == 0:
            x = den
        else:
            x = x + (x - den) / s * (down - s) + torch.randn(x.shape, generator=gen) * up
    torch.testing.assert_close(run("euler_ancestral", lat, sig), x, atol=2e-6, rtol=0)


def test_lcm_renoises_from_the_same_generator():
    lat, sig = torch.zeros(1, 4, 8, 8), sigmas(4)
    gen = torch.Generator().manual_seed(SEED)
    x = start(prepare_noise(lat, SEED), lat, sig)
    for i in range(len(sig) - 1):
        x = toy(x, sig[i].expand(1))
        if sig[i + 1] > 0:
            x = x + torch.randn(x.shape, generator=gen) * sig[i + 1]
    torch.testing.assert_close(run("lcm", lat, sig), x, atol=1e-6, rtol=0)


def test_ancestral_draw_count_does_not_depend_on_eta():
    """ComfyUI draws on every step to a nonzero sigma_down even when eta = 0 (sigma_up = 0)."""
    x, sig = torch.zeros(1, 1, 2, 2), sigmas(4)
    for name in ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral"):
        spec = default_sampler_registry().get(name)
        calls: list[tuple[float, float]] = []
        src = GaussianNoise.like(x, 1)

        def counting(s, sn, src=src, calls=calls):
            calls.append((s, sn))
            return src(s, sn)

        spec(toy, x, sig, noise=counting, eta=0.0)
        assert len(calls) == len(sig) - 2, name  # every step but the last one, to sigma = 0


# ---- Brownian (SDE) noise -----------------------------------------------------------------------


def comfy_tree_noise(x: torch.Tensor, sig: torch.Tensor, seed: int):
    """torchsde queried as ComfyUI's BrownianTreeNoiseSampler(cpu=True) queries it."""
    tree = torchsde.BrownianTree(sig[sig > 0].min(), torch.zeros_like(x), sig.max(), entropy=seed)

    def noise(s: torch.Tensor, sn: torch.Tensor) -> torch.Tensor:
        lo, hi = (s, sn) if s < sn else (sn, s)
        w = tree(lo.float(), hi.float()) * (1.0 if s < sn else -1.0)
        return w / (sn - s).abs().sqrt()

    return noise


def test_brownian_noise_equals_torchsde_increments():
    x, sig = torch.zeros(2, 4, 8, 8), sigmas(8)
    ours = BrownianTreeNoise.for_sigmas(x, sig, SEED)
    ref = comfy_tree_noise(x, sig, SEED)
    pairs = [(sig[i], sig[i + 1]) for i in range(len(sig) - 2)] + [(sig[1], sig[4]), (sig[5], sig[0])]
    for s, sn in reversed(pairs):  # any query order: the tree is fixed by its entropy
        assert torch.equal(ours(float(s), float(sn)), ref(s, sn))


@pytest.mark.filterwarnings("ignore:Should have t")  # torchsde clamps queries at the rounded ends
def test_dpmpp_2m_sde_matches_comfy_update_with_torchsde_noise():
    lat, sig = torch.zeros(1, 4, 8, 8), sigmas(6)
    noise_fn = comfy_tree_noise(lat, sig, SEED)
    x = start(prepare_noise(lat, SEED), lat, sig)
    old = h_last = None
    for i in range(len(sig) - 1):
        den = toy(x, sig[i].expand(1))
        if sig[i + 1] == 0:
            x = den
            continue
        h = float(sig[i].log() - sig[i + 1].log())
        x = float(sig[i + 1] / sig[i]) * math.exp(-h) * x - math.expm1(-2 * h) * den
        if old is not None:
            x = x - 0.5 * math.expm1(-2 * h) * (h / h_last) * (den - old)
        x = x + noise_fn(sig[i], sig[i + 1]) * float(sig[i + 1]) * math.sqrt(-math.expm1(-2 * h))
        old, h_last = den, h
    torch.testing.assert_close(run("dpmpp_2m_sde", lat, sig), x, atol=2e-6, rtol=0)


def test_brownian_batch_one_tree_or_one_tree_per_item():
    x, sig = torch.zeros(2, 4, 8, 8), sigmas(5)
    s, sn = sig[1], sig[2]
    # One seed: one tree over the whole batch (ComfyUI's KSampler).
    whole = BrownianTreeNoise.for_sigmas(x, sig, SEED)(float(s), float(sn))
    assert torch.equal(whole, comfy_tree_noise(x, sig, SEED)(s, sn))
    # A seed per item: item i is drawn from its own item-shaped tree (ComfyUI's BatchedBrownianTree).
    per_item = BrownianTreeNoise.for_sigmas(x, sig, [SEED, SEED + 1])(float(s), float(sn))
    for i, seed in enumerate((SEED, SEED + 1)):
        assert torch.equal(per_item[i], comfy_tree_noise(x[0], sig, seed)(s, sn))
    assert not torch.equal(per_item[0], per_item[1])
    # ... so an item keeps its noise whatever else is in the batch.
    alone = BrownianTreeNoise.for_sigmas(x[:1], sig, [SEED + 1])(float(s), float(sn))
    assert torch.equal(alone[0], per_item[1])
    with pytest.raises(ValueError, match="one per batch item"):
        BrownianTreeNoise.for_sigmas(x, sig, [1, 2, 3])


def test_brownian_increments_are_standard_and_additive():
    x = torch.zeros(200_000)
    tree = BrownianTreeNoise(x, 0.03, 14.6, seed=3)
    a, b, c = 0.5, 2.345678, 9.87
    n1, n2 = tree(b, a), tree(c, b)
    for n in (n1, n2):  # normalised increments are N(0, 1)
        assert abs(n.mean().item()) < 0.01 and abs(n.std().item() - 1) < 0.01
    assert abs((n1 * n2).mean().item()) < 0.01  # disjoint increments are independent
    whole = tree(c, a) * math.sqrt(c - a)
    parts = n1 * math.sqrt(b - a) + n2 * math.sqrt(c - b)
    torch.testing.assert_close(whole, parts, atol=1e-4, rtol=0)
    torch.testing.assert_close(tree(a, b), -tree(b, a))  # downward steps see the negated increment


# ---- *_gpu names --------------------------------------------------------------------------------

# ComfyUI 0.3.64's KSampler sampler list (comfy/samplers.py SAMPLER_NAMES), in its order.
COMFY_ORDER = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
    "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]  # fmt: skip
GPU_NAMES = ["dpmpp_sde_gpu", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde_gpu"]


def test_sampler_choices_are_comfy_names_in_comfy_order():
    # The built-in registry is what the KSampler / KSamplerAdvanced / KSamplerSelect combos offer.
    names = default_sampler_registry().names()
    assert set(GPU_NAMES) <= set(names)
    assert all(n in COMFY_ORDER for n in names)
    assert names == sorted(names, key=COMFY_ORDER.index)


@pytest.mark.parametrize("gpu_name", GPU_NAMES)
def test_gpu_variant_on_cpu_equals_the_plain_sampler(gpu_name):
    lat, sig = latent(), sigmas(5)
    assert torch.equal(run(gpu_name, lat, sig), run(gpu_name.removesuffix("_gpu"), lat, sig))


def test_dpmpp_2m_sde_heun_is_the_heun_solver():
    lat, sig = latent(1), sigmas(5)
    spec = default_sampler_registry().get("dpmpp_2m_sde")
    noise = prepare_noise(lat, SEED)
    direct = sample_custom(
        toy, spec, sig, noise, lat, seed=SEED, model_sampling=MS, sampler_options={"solver_type": "heun"}
    )
    assert torch.equal(run("dpmpp_2m_sde_heun", lat, sig), direct)
    assert not torch.equal(run("dpmpp_2m_sde", lat, sig), direct)


# ---- inpainting (SetLatentNoiseMask) ------------------------------------------------------------


def soft_mask() -> torch.Tensor:
    """A pixel-space mask ramping 0 → 1 left to right: most latent columns get fractional values."""
    xs = torch.arange(64.0)
    return ((xs - 10) / 40).clamp(0, 1).expand(1, 1, 64, 64).clone()


def comfy_inpaint_euler(lat, sig, noise, renoise, mask):
    """ComfyUI's KSamplerX0Inpaint around an Euler loop: before each model call the kept region of x
    is replaced by the latent re-noised to sigma; the kept region of the x0 estimate is the latent.
    The final x is returned as the sampler leaves it."""
    keep = 1 - mask
    x = lat + noise * float(sig[0])  # denoise < 1: plain noise scaling
    for i in range(len(sig) - 1):
        s = sig[i]
        xin = x * mask + (lat + renoise * s) * keep
        den = toy(xin, s.expand(lat.shape[0])) * mask + lat * keep
        x = x + (x - den) / s * (sig[i + 1] - s)
    return x


@pytest.mark.parametrize("name", ["euler", "ddim"])
def test_soft_mask_inpainting_matches_comfy_blend(name):
    lat, sig = latent(1), sigmas(8)[3:]  # the tail of the schedule, as with denoise < 1
    mask = prepare_denoise_mask(soft_mask(), lat)
    assert ((mask > 0.1) & (mask < 0.9)).float().mean() > 0.3
    noise = prepare_noise(lat, SEED)
    # ddim re-noises the kept region with a fresh CPU draw from seed + 1 (ComfyUI's "random" option)
    renoise = (
        torch.randn(lat.shape, generator=torch.Generator().manual_seed(SEED + 1)) if name == "ddim" else noise
    )
    expected = comfy_inpaint_euler(lat, sig, noise, renoise, mask)
    torch.testing.assert_close(run(name, lat, sig, mask=mask), expected, atol=1e-5, rtol=0)


# ---- on a CUDA device (skipped without one) -----------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noise_devices_on_cuda():
    x, sig = torch.zeros(1, 4, 8, 8, device="cuda"), sigmas(5)
    # Ancestral step noise comes from a CUDA generator, as ComfyUI's default_noise_sampler draws it.
    step = GaussianNoise.like(x, SEED)(1.0, 0.5)
    expected = torch.randn(x.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(SEED))
    assert torch.equal(step, expected)
    s, sn = float(sig[1]), float(sig[2])
    # Plain SDE samplers: the CPU tree, moved to the device; *_gpu: a tree on the device.
    cpu_tree = BrownianTreeNoise.for_sigmas(x, sig, SEED)(s, sn)
    assert cpu_tree.device.type == "cuda"
    assert torch.equal(cpu_tree.cpu(), BrownianTreeNoise.for_sigmas(x.cpu(), sig, SEED)(s, sn))
    gpu_tree = BrownianTreeNoise.for_sigmas(x, sig, SEED, cpu=False)(s, sn)
    tree = torchsde.BrownianTree(sig[sig > 0].min(), torch.zeros_like(x), sig.max(), entropy=SEED)
    ref = -tree(torch.tensor(sn), torch.tensor(s)) / math.sqrt(s - sn)
    torch.testing.assert_close(gpu_tree, ref, atol=1e-6, rtol=0)


def test_inpaint_noise_is_seed_plus_one_wrapping_at_2_64():
    like = torch.zeros(1, 4, 8, 8, dtype=torch.float16)
    out = inpaint_noise(like, 41)
    assert out.dtype == torch.float16
    assert torch.equal(out, torch.randn(like.shape, generator=torch.Generator().manual_seed(42)).half())
    largest = inpaint_noise(like.float(), 2**64 - 1)  # the largest seed the widgets allow
    assert torch.equal(largest, torch.randn(like.shape, generator=torch.Generator().manual_seed(0)))
