"""Model sampling and schedules against closed forms computed here with numpy/math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.diffusion.sampling import schedulers as sch
from engine.diffusion.sampling.model_sampling import ModelSamplingDiscrete, ModelSamplingFlow, is_max_denoise


def sd_table() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1 - betas)
    return np.sqrt((1 - ac) / ac)


def log_interp(table: np.ndarray, t: float) -> float:
    lo, hi = math.floor(t), math.ceil(t)
    w = t - lo
    return math.exp((1 - w) * math.log(table[lo]) + w * math.log(table[hi]))


@pytest.fixture(scope="module")
def ms():
    return ModelSamplingDiscrete("eps")


def test_discrete_table_matches_sd_constants(ms):
    tab = sd_table()
    np.testing.assert_allclose(ms.sigmas.numpy(), tab, rtol=1e-6)
    # Well-known SD values (k-diffusion / ComfyUI print these for SD1.x): 0.0292 and 14.6146.
    assert ms.sigma_min == pytest.approx(0.029167, abs=2e-6)
    assert ms.sigma_max == pytest.approx(14.614642, abs=2e-5)


def test_timestep_sigma_roundtrip_and_log_interpolation(ms):
    tab = sd_table()
    ks = torch.tensor([0.0, 1.0, 250.0, 999.0])
    np.testing.assert_allclose(ms.sigma(ks).numpy(), tab[[0, 1, 250, 999]], rtol=1e-6)
    # Half-way in t is the geometric mean of neighbouring sigmas (linear in log sigma).
    assert float(ms.sigma(torch.tensor(10.5, dtype=torch.float64))) == pytest.approx(
        math.sqrt(tab[10] * tab[11]), rel=1e-9
    )
    sig = torch.tensor([tab[3], math.sqrt(tab[500] * tab[501]), tab[998]], dtype=torch.float64)
    np.testing.assert_allclose(ms.timestep(sig).numpy(), [3.0, 500.5, 998.0], atol=1e-6)
    t = torch.tensor([0.0, 17.25, 640.8, 999.0], dtype=torch.float64)
    np.testing.assert_allclose(ms.timestep(ms.sigma(t)).numpy(), t.numpy(), atol=1e-6)


@pytest.mark.parametrize("sigma", [0.1, 1.0, 7.0])
def test_eps_and_v_parameterisations_recover_x0(sigma):
    g = torch.Generator().manual_seed(0)
    x0, n = (
        torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64),
        torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64),
    )
    x = x0 + sigma * n
    s = torch.full((2,), sigma, dtype=torch.float64)
    alpha, sig_vp = 1 / math.sqrt(1 + sigma**2), sigma / math.sqrt(1 + sigma**2)
    eps_ms, v_ms = ModelSamplingDiscrete("eps"), ModelSamplingDiscrete("v")
    torch.testing.assert_close(eps_ms.calculate_input(s, x), alpha * x0 + sig_vp * n)
    torch.testing.assert_close(eps_ms.calculate_denoised(s, n, x), x0)
    v = alpha * n - sig_vp * x0  # Salimans & Ho 2022
    torch.testing.assert_close(v_ms.calculate_denoised(s, v, x), x0)


def test_flow_parameterisation_and_shift():
    fl = ModelSamplingFlow(shift=3.0)
    assert float(fl.sigma(torch.tensor(500.0))) == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
    assert fl.sigma_max == pytest.approx(1.0)
    assert float(fl.timestep(torch.tensor(0.25))) == pytest.approx(250.0)
    assert ModelSamplingFlow(1.0).percent_to_sigma(0.3) == pytest.approx(0.7)
    x0, n = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    s = torch.tensor([0.4])
    x = fl.noise_scaling(s, n, x0)
    torch.testing.assert_close(x, 0.6 * x0 + 0.4 * n)
    torch.testing.assert_close(fl.calculate_denoised(s, n - x0, x), x0)
    torch.testing.assert_close(fl.calculate_input(s, x), x)


def test_noise_scaling_max_denoise(ms):
    n, lat = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0)
    s = torch.tensor(3.0)
    assert float(ms.noise_scaling(s, n, lat)) == pytest.approx(5.0)
    assert float(ms.noise_scaling(s, n, lat, max_denoise=True)) == pytest.approx(2 + math.sqrt(10))
    assert is_max_denoise(ms, torch.tensor([ms.sigma_max, 1.0, 0.0]))
    assert not is_max_denoise(ms, torch.tensor([5.0, 1.0, 0.0]))


def test_karras_and_exponential_closed_forms():
    k = sch.karras_sigmas(3, 0.1, 10.0, rho=7.0)
    mid = ((10 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7
    np.testing.assert_allclose(k.numpy(), [10.0, mid, 0.1, 0.0], rtol=1e-6)
    e = sch.exponential_sigmas(5, 0.01, 100.0)
    np.testing.assert_allclose(e.numpy(), [100.0, 10.0, 1.0, 0.1, 0.01, 0.0], rtol=1e-5)


def test_normal_sgm_simple_ddim_uniform(ms):
    tab = sd_table()
    np.testing.assert_allclose(
        sch.normal(ms, 4).numpy(), [tab[999], tab[666], tab[333], tab[0], 0.0], rtol=1e-6
    )
    sgm_ts = [999.0, 749.25, 499.5, 249.75]
    np.testing.assert_allclose(
        sch.sgm_uniform(ms, 4).numpy(), [log_interp(tab, t) for t in sgm_ts] + [0.0], rtol=1e-6
    )
    np.testing.assert_allclose(
        sch.simple(ms, 4).numpy(), [tab[999], tab[749], tab[499], tab[249], 0.0], rtol=1e-6
    )
    np.testing.assert_allclose(
        sch.ddim_uniform(ms, 4).numpy(), [tab[751], tab[501], tab[251], tab[1], 0.0], rtol=1e-6
    )
    d7 = sch.ddim_uniform(ms, 7)  # 1000 // 7 = 142: indices 1, 143, ..., 995 -> 8 sigmas + 0
    np.testing.assert_allclose(d7.numpy(), [tab[i] for i in range(995, 0, -142)] + [0.0], rtol=1e-6)
    for name, fn in sch.default_scheduler_table().items():
        s = fn(ms, 10)
        assert s[-1] == 0 and bool((s[:-1] > 0).all()), name
        assert bool((s[1:] < s[:-1]).all()), f"{name} is not strictly decreasing"


def test_incomplete_beta_against_closed_forms():
    # Beta(1/2, 1/2) is the arcsine law: CDF = (2/pi)·asin(sqrt(x)), so ppf(p) = sin²(pi·p/2).
    for p in (0.01, 0.2, 0.5, 0.77, 0.999):
        assert sch.beta_ppf(p, 0.5, 0.5) == pytest.approx(math.sin(math.pi * p / 2) ** 2, abs=1e-12)
    for x in (0.1, 0.5, 0.9):
        assert sch.beta_cdf(x, 1.0, 1.0) == pytest.approx(x, abs=1e-12)
        assert sch.beta_cdf(x, 2.0, 1.0) == pytest.approx(x * x, abs=1e-12)
        assert sch.beta_cdf(x, 2.0, 2.0) == pytest.approx(3 * x * x - 2 * x**3, abs=1e-12)
    # symmetric parameters: ppf(1 - p) = 1 - ppf(p)
    assert sch.beta_ppf(0.3, 0.6, 0.6) + sch.beta_ppf(0.7, 0.6, 0.6) == pytest.approx(1.0, abs=1e-12)


def test_beta_schedule(ms):
    tab = sd_table()
    # With alpha = beta = 1/2 the quantiles of 1, 2/3, 1/3 are 1, 3/4, 1/4 -> t = 999, 749, 250.
    s = sch.beta(ms, 3, alpha=0.5, beta_param=0.5)
    np.testing.assert_allclose(s.numpy(), [tab[999], tab[749], tab[250], 0.0], rtol=1e-6)
    d = sch.beta(ms, 20)
    assert d[0] == pytest.approx(tab[999], rel=1e-6) and d[-1] == 0


def test_sd_turbo_and_denoise(ms):
    tab = sd_table()
    np.testing.assert_allclose(sch.sd_turbo_sigmas(ms, 1).numpy(), [tab[999], 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        sch.sd_turbo_sigmas(ms, 4).numpy(), [tab[999], tab[899], tab[799], tab[699], 0.0], rtol=1e-6
    )
    np.testing.assert_allclose(
        sch.sd_turbo_sigmas(ms, 2, denoise=0.5).numpy(), [tab[499], tab[399], 0.0], rtol=1e-6
    )
    full = sch.karras(ms, 20)
    part = sch.sigmas_with_denoise(lambda n: sch.karras(ms, n), 10, 0.5)
    assert len(part) == 11
    torch.testing.assert_close(part, full[-11:])
    part3 = sch.sigmas_with_denoise(lambda n: sch.karras(ms, n), 10, 0.3)  # int(10/0.3) = 33 steps
    torch.testing.assert_close(part3, sch.karras(ms, 33)[-11:])
    assert len(sch.sigmas_with_denoise(lambda n: sch.karras(ms, n), 10, 0.0)) == 0
