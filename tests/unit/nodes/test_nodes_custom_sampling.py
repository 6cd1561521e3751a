"""The Sampler* nodes: each returns the runtime's sampler with its options bound, checked by behaviour on
the analytic Gaussian problem (data ~ N(MU, S²), exact denoiser D(x, σ) = MU + S²/(S² + σ²)·(x − MU)):
options that turn a sampler into a known one must give that one's result, noise options must act."""

from __future__ import annotations

import math

import pytest
import torch

from engine.handles import load_checkpoint_handles
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

CS = builtin("custom_sampling")
MU, S = 0.5, 0.8
SIGMAS = torch.tensor([14.6, 6.0, 2.5, 1.0, 0.4, 0.1, 0.0], dtype=torch.float64)


def exact(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sg = sigma.view(-1, *([1] * (x.ndim - 1)))
    return MU + S * S / (S * S + sg * sg) * (x - MU)


class Unguided:
    """The exact denoiser as a guider without guidance: its unconditional estimate is the same."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return exact(x, sigma)

    def with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = exact(x, sigma)
        return d, d


def x_start(seed: int = 0) -> torch.Tensor:
    z = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return MU + z * math.sqrt(S * S + float(SIGMAS[0]) ** 2)


def run(spec, seed: int = 0, sigmas: torch.Tensor = SIGMAS, denoiser=None) -> torch.Tensor:
    x = x_start()
    return spec(denoiser or Unguided(), x, sigmas, noise=spec.make_noise(x, sigmas, seed))


@pytest.fixture(scope="module")
def context():
    return node_context()[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A real MODEL (tiny random SD1 checkpoint): nodes read its model sampling."""
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "sd1.safetensors", "sd1", seed=1)
    model, _, _ = load_checkpoint_handles(path, manager=ModelManager(select_device(MemoryOptions())))
    return model


def builtin_sampler(context, name: str):
    return context.samplers.sampler(name)


def test_euler_ancestral_with_eta_0_is_euler(context):
    (spec,) = CS.sampler_euler_ancestral(0.0, 1.0, context)
    torch.testing.assert_close(run(spec), run(builtin_sampler(context, "euler")))
    (noisy,) = CS.sampler_euler_ancestral(1.0, 1.0, context)
    assert not torch.allclose(run(noisy, seed=1), run(noisy, seed=2))
    (quiet,) = CS.sampler_euler_ancestral(1.0, 0.0, context)  # s_noise 0: the draws are scaled away
    torch.testing.assert_close(run(quiet, seed=1), run(quiet, seed=2))


def test_euler_ancestral_cfgpp_with_eta_0_unguided_is_euler(context):
    (spec,) = CS.sampler_euler_ancestral_cfgpp(0.0, 1.0, context)
    torch.testing.assert_close(run(spec), run(builtin_sampler(context, "euler")))


def test_lms_order_1_is_euler_and_the_order_matters(context):
    (first,) = CS.sampler_lms(1, context)
    torch.testing.assert_close(run(first), run(builtin_sampler(context, "euler")))
    (fourth,) = CS.sampler_lms(4, context)
    torch.testing.assert_close(run(fourth), run(builtin_sampler(context, "lms")))
    assert not torch.allclose(run(first), run(fourth))


@pytest.mark.parametrize(
    ("node", "extra"),
    [
        ("sampler_dpmpp_2m_sde", ("midpoint",)),
        ("sampler_dpmpp_2m_sde", ("heun",)),
        ("sampler_dpmpp_3m_sde", ()),
        ("sampler_dpmpp_sde", ()),
        ("sampler_dpmpp_2s_ancestral", ()),
    ],
)
def test_sde_samplers_noise_scale_and_device_choice(context, node, extra):
    make = getattr(CS, node)
    with_r = node == "sampler_dpmpp_sde"

    def build(eta: float, s_noise: float, device: str = "cpu"):
        args = [*extra, eta, s_noise] + ([0.5] if with_r else [])
        if node != "sampler_dpmpp_2s_ancestral":
            args.append(device)
        return make(*args, context)[0]

    quiet = build(1.0, 0.0)
    torch.testing.assert_close(run(quiet, seed=1), run(quiet, seed=2))  # no noise: seed-independent
    noisy = build(1.0, 1.0)
    assert not torch.allclose(run(noisy, seed=1), run(noisy, seed=2))
    if node != "sampler_dpmpp_2s_ancestral":
        assert build(1.0, 1.0, "gpu").noise_on_device and not noisy.noise_on_device
        # On a CPU latent the *_gpu tree is the same Brownian path (built in the latent's dtype there).
        torch.testing.assert_close(
            run(build(1.0, 1.0, "gpu"), seed=3), run(noisy, seed=3), atol=1e-5, rtol=1e-4
        )


def test_dpmpp_2m_sde_solver_type_reaches_the_sampler(context):
    (heun,) = CS.sampler_dpmpp_2m_sde("heun", 1.0, 1.0, "cpu", context)
    torch.testing.assert_close(run(heun, seed=4), run(builtin_sampler(context, "dpmpp_2m_sde_heun"), seed=4))
    (midpoint,) = CS.sampler_dpmpp_2m_sde("midpoint", 1.0, 1.0, "cpu", context)
    torch.testing.assert_close(run(midpoint, seed=4), run(builtin_sampler(context, "dpmpp_2m_sde"), seed=4))


def test_dpm_adaptative_tolerances_change_the_number_of_model_calls(context):
    calls = []

    def counting(x, sigma):
        calls.append(1)
        return exact(x, sigma)

    options = {
        "rtol": 0.05,
        "atol": 0.0078,
        "h_init": 0.05,
        "pcoeff": 0.0,
        "icoeff": 1.0,
        "dcoeff": 0.0,
        "accept_safety": 0.81,
        "eta": 0.0,
        "s_noise": 1.0,
    }
    (loose,) = CS.sampler_dpm_adaptative(3, context, **options)
    run(loose, denoiser=counting)
    loose_calls = len(calls)
    calls.clear()
    (tight,) = CS.sampler_dpm_adaptative(3, context, **{**options, "rtol": 0.0005, "atol": 0.00005})
    run(tight, denoiser=counting)
    assert len(calls) > loose_calls > 0


def test_er_sde_types(context):
    (default,) = CS.sampler_er_sde("ER-SDE", 3, 1.0, 1.0, context)
    torch.testing.assert_close(run(default, seed=5), run(builtin_sampler(context, "er_sde"), seed=5))
    (ode,) = CS.sampler_er_sde("ODE", 3, 1.0, 1.0, context)
    torch.testing.assert_close(run(ode, seed=1), run(ode, seed=2))  # deterministic
    (reverse,) = CS.sampler_er_sde("Reverse-time SDE", 3, 1.0, 1.0, context)
    assert not torch.allclose(run(reverse, seed=1), run(reverse, seed=2))
    # Stage 1 with f(l) = l (the ODE) is the exponential-integrator step x0 + σ_next/σ·(x − x0): DDIM.
    (ode1,) = CS.sampler_er_sde("ODE", 1, 0.0, 1.0, context)
    torch.testing.assert_close(run(ode1), run(builtin_sampler(context, "ddim")))


def test_euler_cfgpp_versions(context):
    (regular,) = CS.sampler_euler_cfgpp("regular", context)
    assert regular.name == "euler_cfg_pp"
    (alternative,) = CS.sampler_euler_cfgpp("alternative", context)
    # Unguided (D_uncond = D) the alternative direction (x − 2D + D_uncond)/σ is Euler's (x − D)/σ.
    torch.testing.assert_close(run(alternative), run(builtin_sampler(context, "euler")))

    class Guided(Unguided):
        def with_uncond(self, x, sigma):
            d = exact(x, sigma)
            return d + 0.1, d - 0.1

    assert not torch.allclose(run(alternative, denoiser=Guided()), run(builtin_sampler(context, "euler")))


def test_lcm_upscale_grows_the_latent_and_at_ratio_1_is_lcm(context):
    (same,) = CS.sampler_lcm_upscale(1.0, -1, "nearest-exact")
    torch.testing.assert_close(run(same, seed=7), run(builtin_sampler(context, "lcm"), seed=7))
    (double,) = CS.sampler_lcm_upscale(2.0, 2, "bilinear")
    out = run(double, seed=7)
    assert out.shape == (2, 1, 12, 12) and torch.isfinite(out).all()
    # upscale_steps 2: factors linspace(1, 2, 3)[1:] = 1.5 then 2 after the first two steps.
    sizes = []
    run(double, seed=7, denoiser=lambda x, s: (sizes.append(x.shape[-1]), exact(x, s))[1])
    assert sizes == [6, 9, 12, 12, 12, 12]


def test_sa_solver_tau_window_follows_the_percent_range(context, tiny_model):
    """tau = eta only for sigmas between the model's sigma at sde_start_percent and at sde_end_percent:
    with a window that no step falls in the sampler is deterministic."""
    (spec,) = CS.sampler_sa_solver(tiny_model, 1.0, 0.2, 0.8, 1.0, 3, 4, False, False, context)
    tau = dict(spec.options)["tau_func"]
    ms = tiny_model.model_sampling
    inside = (ms.percent_to_sigma(0.2) + ms.percent_to_sigma(0.8)) / 2
    assert (
        tau(inside) == 1.0 and tau(ms.percent_to_sigma(0.1)) == 0.0 and tau(ms.percent_to_sigma(0.9)) == 0.0
    )
    (closed,) = CS.sampler_sa_solver(tiny_model, 1.0, 0.5, 0.5, 1.0, 3, 4, False, False, context)
    torch.testing.assert_close(run(closed, seed=1), run(closed, seed=2))
    (open_,) = CS.sampler_sa_solver(tiny_model, 1.0, 0.0, 1.0, 1.0, 3, 4, False, False, context)
    assert not torch.allclose(run(open_, seed=1), run(open_, seed=2))


def apg_hook(tiny_model, eta: float, threshold: float, momentum: float):
    (patched,) = CS.apg(tiny_model, eta, threshold, momentum)
    assert "sampler_pre_cfg_function" not in tiny_model.model_options  # the input MODEL is untouched
    (hook,) = patched.model_options["sampler_pre_cfg_function"]
    return hook


def apg_args(cond, uncond, sigma: float = 5.0, scale: float = 2.0) -> dict:
    return {"conds_out": [cond, uncond], "sigma": torch.tensor([sigma]), "cond_scale": scale}


def test_apg_projection_threshold_and_momentum_by_hand(tiny_model):
    cond = torch.tensor([3.0, 4.0]).reshape(1, 1, 1, 2)  # |cond| = 5
    uncond = torch.zeros(1, 1, 1, 2)
    # eta 1, no threshold: g' = g = cond, and the rewritten cond is uncond + g' + g / scale.
    out = apg_hook(tiny_model, 1.0, 0.0, 0.0)(apg_args(cond, uncond))
    torch.testing.assert_close(out[0], cond + cond / 2.0)
    assert out[1] is uncond
    # eta 0 drops the part of g parallel to cond (here all of it).
    out = apg_hook(tiny_model, 0.0, 0.0, 0.0)(apg_args(cond, uncond))
    torch.testing.assert_close(out[0], cond / 2.0)
    # An orthogonal guidance survives eta 0; a threshold of 2.5 halves a guidance of norm 5.
    side = torch.tensor([4.0, -3.0]).reshape(1, 1, 1, 2)  # orthogonal to cond, norm 5
    out = apg_hook(tiny_model, 0.0, 2.5, 0.0)(apg_args(cond, cond - side))
    torch.testing.assert_close(out[0], (cond - side) + side * 0.5 + side / 2.0)
    # Momentum 0.5: the second step's guidance is 0.5·g1 + g2; a higher sigma starts over.
    hook = apg_hook(tiny_model, 1.0, 0.0, 0.5)
    hook(apg_args(cond, uncond, sigma=5.0))
    second = hook(apg_args(cond, uncond, sigma=3.0))
    torch.testing.assert_close(second[0], 1.5 * cond + cond / 2.0)
    restart = hook(apg_args(cond, uncond, sigma=9.0))
    torch.testing.assert_close(restart[0], cond + cond / 2.0)
