"""Each added sampler against a compact transcription of ComfyUI's update loop (comfy/k_diffusion).

The transcriptions below are written in ComfyUI's style - float32 sigma tensors, torch ops, one
``torch.randn`` per noise draw from a generator seeded with the seed - independently of the code
under test (which works on Python floats and shared helpers). The toy model is guided, with a
known unconditional part, so the CFG++ samplers' use of it is checked too; x is float32.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.diffusion.sampling.registry import default_sampler_registry
from engine.diffusion.sampling.schedulers import karras_sigmas

MU, S, G = 0.4, 0.9, 0.15
SEED = 1234


class Toy:
    """D_cfg = D + G·tanh(x), D_uncond = D − G·tanh(x), D the Gaussian posterior mean (nonlinear in x,
    so multistep history terms matter)."""

    def __init__(self) -> None:
        self.uncond: torch.Tensor | None = None

    def _parts(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sg = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        return MU + S * S / (S * S + sg * sg) * (x - MU), G * torch.tanh(x)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        d, g = self._parts(x, sigma)
        self.uncond = d - g  # what ComfyUI's post-CFG hook would capture
        return d + g

    def with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d, g = self._parts(x, sigma)
        return d + g, d - g


def randn_source(x: torch.Tensor, seed: int = SEED):
    gen = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(x.size(), generator=gen, dtype=x.dtype)


def anc(s_from, s_to, eta):
    if not eta:
        return s_to, torch.zeros(())
    up = torch.minimum(s_to, eta * (s_to**2 * (s_from**2 - s_to**2) / s_from**2) ** 0.5)
    return (s_to**2 - up**2) ** 0.5, up


# ---- transcriptions -----------------------------------------------------------------------------


def t_euler_ancestral_cfg_pp(m, x, sig, eta=1.0, s_noise=1.0):
    rnd = randn_source(x)
    for i in range(len(sig) - 1):
        den = m(x, sig[i].expand(x.shape[0]))
        if sig[i + 1] == 0:
            x = den
            continue
        d = (x - m.uncond) / sig[i]
        down, up = anc(sig[i], sig[i + 1], eta)
        x = den + down * d
        if eta > 0 and s_noise > 0:
            x = x + rnd() * s_noise * up
    return x


def t_dpmpp_2s_ancestral_cfg_pp(m, x, sig, eta=1.0):
    rnd = randn_source(x)
    for i in range(len(sig) - 1):
        # m.uncond is read where it is used, as ComfyUI reads its post-CFG hook's latest capture.
        den = m(x, sig[i].expand(x.shape[0]))
        down, up = anc(sig[i], sig[i + 1], eta)
        if down == 0:
            x = den + (x - m.uncond) / sig[i] * down
        else:
            t, tn = -sig[i].log(), -down.log()
            h = tn - t
            smid = (-(t + h / 2)).exp()
            x2 = (smid / sig[i]) * (x + den - m.uncond) - torch.expm1(-h / 2) * den
            den2 = m(x2, smid.expand(x.shape[0]))
            x = (down / sig[i]) * (x + den - m.uncond) - torch.expm1(-h) * den2
        if sig[i + 1] > 0:
            x = x + rnd() * up
    return x


def t_dpmpp_2m_cfg_pp(m, x, sig):
    old = None
    for i in range(len(sig) - 1):
        den = m(x, sig[i].expand(x.shape[0]))
        unc = m.uncond
        h = sig[i].log() - sig[i + 1].log()
        if old is None or sig[i + 1] == 0:
            mix = -torch.exp(-h) * unc
        else:
            r = (sig[i - 1].log() - sig[i].log()) / h
            mix = -torch.exp(-h) * unc - torch.expm1(-h) * (den - old) / (2 * r)
        x = den + mix + torch.exp(-h) * x
        old = unc
    return x


def t_heunpp2(m, x, sig):
    end = sig[-1]
    for i in range(len(sig) - 1):
        den = m(x, sig[i].expand(x.shape[0]))
        d = (x - den) / sig[i]
        dt = sig[i + 1] - sig[i]
        if sig[i + 1] == end:
            x = x + d * dt
            continue
        x2 = x + d * dt
        d2 = (x2 - m(x2, sig[i + 1].expand(x.shape[0]))) / sig[i + 1]
        if sig[i + 2] == end:
            w2 = sig[i + 1] / (2 * sig[0])
            x = x + ((1 - w2) * d + w2 * d2) * dt
        else:
            x3 = x2 + d2 * (sig[i + 2] - sig[i + 1])
            d3 = (x3 - m(x3, sig[i + 2].expand(x.shape[0]))) / sig[i + 2]
            w2, w3 = sig[i + 1] / (3 * sig[0]), sig[i + 2] / (3 * sig[0])
            x = x + ((1 - w2 - w3) * d + w2 * d2 + w3 * d3) * dt
    return x


def _ab_exact(h):
    """Exact variable-step Adams-Bashforth weights (newest first) for step sizes h[0] (current),
    h[1], ...: the integral over the step of each Lagrange basis polynomial, divided by h[0]."""
    nodes = [0.0]
    for hk in h[1:]:
        nodes.append(nodes[-1] - hk)
    ws = []
    for j in range(len(nodes)):
        others = [v for k, v in enumerate(nodes) if k != j]
        # midpoint quadrature of a polynomial of degree <= 3 with 2 000 cells: exact to ~1e-7
        ts = [(k + 0.5) * h[0] / 2000 for k in range(2000)]
        total = 0.0
        for t in ts:
            v = 1.0
            for o in others:
                v *= (t - o) / (nodes[j] - o)
            total += v
        ws.append(total / 2000)
    return ws


def _ipndm_v_comfy(hn, h1, h2=None, h3=None):
    """ComfyUI's (diff-solvers') closed-form ipndm_v weights, newest first, rewritten with q = hn/h1."""
    q = hn / h1
    if h2 is None:
        return [1 + q / 2, -q / 2]
    a = (1 - hn / (3 * (hn + h1)) * (hn * (hn + h1)) / (h1 * (h1 + h2))) / 2
    if h3 is None:
        return [1 + q / 2 + a, -q / 2 - (1 + h1 / h2) * a, a * h1 / h2]
    b = ((1 - hn / (3 * (hn + h1))) / 2 + (1 - hn / (2 * (hn + h1))) * hn / (6 * (hn + h1 + h2))) * (
        hn * (hn + h1) * (hn + h1 + h2) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    )
    c = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [
        1 + q / 2 + a + b,
        -q / 2 - (1 + h1 / h2) * a - (1 + h1 / h2 + c) * b,
        a * h1 / h2 + (h1 / h2 + c * (1 + h2 / h3)) * b,
        -b * c * h1 / h2,
    ]


def t_ipndm(m, x, sig, variable):
    fixed = {
        1: [1.0],
        2: [1.5, -0.5],
        3: [23 / 12, -16 / 12, 5 / 12],
        4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
    }
    ds = []
    for i in range(len(sig) - 1):
        den = m(x, sig[i].expand(x.shape[0]))
        d = (x - den) / sig[i]
        order = min(4, i + 1)
        if sig[i + 1] == 0:
            x = den
        else:
            if variable:
                hs = [float(sig[i + 1] - sig[i])] + [
                    float(sig[i - k] - sig[i - k - 1]) for k in range(order - 1)
                ]
                w = _ipndm_v_comfy(*hs) if order > 1 else [1.0]
            else:
                w = fixed[order]
            hist = [d] + ds[::-1][: order - 1]
            x = x + (sig[i + 1] - sig[i]) * sum(wk * dk for wk, dk in zip(w, hist, strict=True))
        ds = (ds + [d])[-3:]
    return x


def t_deis(m, x, sig, max_order=3):
    # VP time of each sigma for EDM's VP fit, then tAB weights with an autograd kernel (as DEIS does).
    eps_s, smin, smax = 1e-3, 0.002, 80.0
    beta_d = 2 * (math.log(smin**2 + 1) / eps_s - math.log(smax**2 + 1)) / (eps_s - 1)
    beta_0 = math.log(smax**2 + 1) - 0.5 * beta_d
    ts = ((beta_0**2 + 2 * beta_d * (sig.double() ** 2 + 1).log()).sqrt() - beta_0) / beta_d
    ds = []
    for i in range(len(sig) - 1):
        den = m(x, sig[i].expand(x.shape[0]))
        d = (x - den) / sig[i]
        order = 1 if sig[i + 1] <= 0 else min(max_order, i + 1)
        if order == 1:
            x = x + (sig[i + 1] - sig[i]) * d
        else:
            taus = torch.linspace(float(ts[i]), float(ts[i + 1]), 10_000, dtype=torch.float64).requires_grad_(
                True
            )
            log_alpha = -0.5 * taus**2 * beta_d - taus * beta_0
            (grad,) = torch.autograd.grad(log_alpha.sum(), taus)
            taus = taus.detach()
            alpha = log_alpha.detach().exp()
            kern = -0.5 * grad / torch.sqrt(alpha * (1 - alpha))
            prev = [ts[i - k] for k in range(order)]
            hist = [d] + ds[::-1][: order - 1]
            for j in range(order):
                poly = torch.ones_like(taus)
                for k in range(order):
                    if k != j:
                        poly = poly * (taus - prev[k]) / (prev[j] - prev[k])
                coeff = float((kern * poly).sum() * (ts[i + 1] - ts[i]) / 10_000)
                x = x + coeff * hist[j]
        ds = (ds + [d])[-(max_order - 1) :]
    return x


def t_res_multistep(m, x, sig, eta, cfg_pp):
    rnd = randn_source(x)
    old, old_down = None, None
    for i in range(len(sig) - 1):
        den = m(x, sig[i].expand(x.shape[0]))
        unc = m.uncond if cfg_pp else den
        down, up = anc(sig[i], sig[i + 1], eta)
        if down == 0 or old is None:
            x = den + (x - unc) / sig[i] * down if cfg_pp else x + (x - den) / sig[i] * (down - sig[i])
        else:
            t, t_old, t_next, t_prev = (-v.log() for v in (sig[i], old_down, down, sig[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            p1 = torch.expm1(-h) / -h
            p2 = (p1 - 1) / -h
            b1, b2 = p1 - p2 / c2, p2 / c2
            if cfg_pp:
                x = x + (den - unc)
            x = torch.exp(-h) * x + h * (b1 * unc + b2 * old)
        if sig[i + 1] > 0:
            x = x + rnd() * up
        old, old_down = unc, down
    return x


def t_gradient_estimation(m, x, sig, cfg_pp, gamma=2.0):
    old_d = None
    for i in range(len(sig) - 1):
        den = m(x, sig[i].expand(x.shape[0]))
        d = (x - (m.uncond if cfg_pp else den)) / sig[i]
        dt = sig[i + 1] - sig[i]
        if sig[i + 1] == 0:
            x = den
        else:
            x = den + d * sig[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                x = x + (gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def t_er_sde(m, x, sig):
    rnd = randn_source(x)
    f = lambda v: v * (torch.exp(v**0.3) + 10.0)  # noqa: E731
    lam = sig  # sigma / alpha with alpha = 1
    pts = torch.arange(200, dtype=torch.float32)
    old = old_dd = None
    for i in range(len(sig) - 1):
        den = m(x, sig[i].expand(x.shape[0]))
        if sig[i + 1] == 0:
            x = den
        else:
            ls, lt = lam[i], lam[i + 1]
            r = f(lt) / f(ls)
            x = r * x + (1 - r) * den
            if i >= 1:
                dt = lt - ls
                step = -dt / 200
                pos = lt + pts * step
                dd = (den - old) / (ls - lam[i - 1])
                x = x + (dt + (1 / f(pos)).sum() * step * f(lt)) * dd
                if i >= 2:
                    du = (dd - old_dd) / ((ls - lam[i - 2]) / 2)
                    x = x + (dt**2 / 2 + ((pos - ls) / f(pos)).sum() * step * f(lt)) * du
                old_dd = dd
            x = x + rnd() * (lt**2 - ls**2 * r**2).sqrt().nan_to_num(0.0)
        old = den
    return x


def t_seeds(m, x, sig, rs, eta=1.0):
    """SEEDS-2 (rs = (1/2,)) and SEEDS-3 (rs = (1/3, 2/3)) in VE form (alpha = 1)."""
    rnd = randn_source(x)
    for i in range(len(sig) - 1):
        den = m(x, sig[i].expand(x.shape[0]))
        if sig[i + 1] == 0:
            x = den
            continue
        ls, lt = -sig[i].log(), -sig[i + 1].log()
        h = lt - ls
        he = h * (eta + 1)
        phi1 = torch.expm1
        phi2 = lambda v: (torch.expm1(v) - v) / v  # noqa: E731
        s1 = (-(ls + rs[0] * h)).exp()
        x2 = s1 / sig[i] * (-rs[0] * h * eta).exp() * x - phi1(-rs[0] * he) * den
        nz = (-torch.expm1(-2 * rs[0] * h * eta)).sqrt() * rnd()
        x2 = x2 + nz * s1
        den2 = m(x2, s1.expand(x.shape[0]))
        if len(rs) == 1:
            dd = den + (den2 - den) / (2 * rs[0])
            x = sig[i + 1] / sig[i] * (-h * eta).exp() * x - phi1(-he) * dd
            seg = (rs[0] - 1) * h * eta
            nz = nz * seg.exp() + (-torch.expm1(2 * seg)).sqrt() * rnd()
            x = x + nz * sig[i + 1]
            continue
        s2 = (-(ls + rs[1] * h)).exp()
        a32 = rs[1] / rs[0] * phi2(-rs[1] * he)
        x3 = s2 / sig[i] * (-rs[1] * h * eta).exp() * x - ((phi1(-rs[1] * he) - a32) * den + a32 * den2)
        seg = (rs[0] - rs[1]) * h * eta
        nz = nz * seg.exp() + (-torch.expm1(2 * seg)).sqrt() * rnd()
        x3 = x3 + nz * s2
        den3 = m(x3, s2.expand(x.shape[0]))
        b3 = phi2(-he) / rs[1]
        x = sig[i + 1] / sig[i] * (-h * eta).exp() * x - ((phi1(-he) - b3) * den + b3 * den3)
        seg = (rs[1] - 1) * h * eta
        nz = nz * seg.exp() + (-torch.expm1(2 * seg)).sqrt() * rnd()
        x = x + nz * sig[i + 1]
    return x


def _sa_coeffs(sigma_t, lams, ls, lt, tau):
    """Lagrange-basis integrals by the matrix form of the integration by parts (as SA-Solver's
    reference code builds them), times alpha_t."""
    k = len(lams)
    c = 1 + tau**2
    p = torch.arange(k, dtype=torch.float64)
    prod = lt**p - ls**p * math.exp(-c * (lt - ls))
    depth = p[:, None] - p[None, :]
    logf = torch.lgamma(p + 1)
    mat = logf[:, None] - logf[None, :] - depth * math.log(c)
    sign = torch.where(depth % 2 == 0, 1.0, -1.0).double()
    moments = torch.tril(mat.exp() * sign) @ prod
    vt = torch.vander(torch.tensor(lams, dtype=torch.float64), k, increasing=True).T
    return sigma_t * math.exp(lt) * torch.linalg.solve(vt, moments)


def t_sa_solver(m, x, sig, tau_of, pece, po=3, co=4):
    rnd = randn_source(x)
    s = [float(v) for v in sig]
    lam = [-math.log(v) if v > 0 else math.inf for v in s]
    n = len(s) - 1
    x_pred, h, tau, noise, preds = x, 0.0, 0.0, None, []
    for i in range(n):
        den = m(x_pred, sig[i].expand(x.shape[0]))
        preds = (preds + [den])[-4:]
        p_ord = min(po, len(preds), n - 1 - i)
        c_ord = 0 if (i == 0 or (s[i + 1] == 0 and not pece)) else min(co, len(preds), n - i)
        if c_ord == 0:
            x = x_pred
        else:
            b = _sa_coeffs(s[i], lam[i - c_ord + 1 : i + 1], lam[i - 1], lam[i], tau)
            x = s[i] / s[i - 1] * math.exp(-(tau**2) * h) * x + sum(
                float(bk) * pk for bk, pk in zip(b, preds[-c_ord:], strict=True)
            )
            if tau > 0:
                x = x + noise
            if pece:
                den = m(x, sig[i].expand(x.shape[0]))
                preds[-1] = den
        if s[i + 1] == 0:
            x = den
            continue
        tau = tau_of(s[i + 1])
        b = _sa_coeffs(s[i + 1], lam[i - p_ord + 1 : i + 1], lam[i], lam[i + 1], tau)
        h = lam[i + 1] - lam[i]
        x_pred = s[i + 1] / s[i] * math.exp(-(tau**2) * h) * x + sum(
            float(bk) * pk for bk, pk in zip(b, preds[-p_ord:], strict=True)
        )
        if tau > 0:
            noise = rnd() * s[i + 1] * math.sqrt(-math.expm1(-2 * tau**2 * h))
            x_pred = x_pred + noise
    return x


def _dpm_step(m, x, t, tn, order):
    """One DPM-Solver-1/2/3 step from t to tn (lambda = -log sigma) on eps = (x - D)/sigma."""
    sg = lambda v: (-v).exp()  # noqa: E731

    def eps(xx, v):
        return (xx - m(xx, sg(v).expand(x.shape[0]))) / sg(v)

    h = tn - t
    e = eps(x, t)
    base = x - sg(tn) * h.expm1() * e
    if order == 1:
        return base
    r1 = 0.5 if order == 2 else 1 / 3
    s1 = t + r1 * h
    e1 = eps(x - sg(s1) * (r1 * h).expm1() * e, s1)
    if order == 2:
        return base - sg(tn) / (2 * r1) * h.expm1() * (e1 - e)
    s2 = t + 2 / 3 * h
    u2 = (
        x - sg(s2) * (2 / 3 * h).expm1() * e - sg(s2) * 2 * ((2 / 3 * h).expm1() / (2 / 3 * h) - 1) * (e1 - e)
    )
    e2 = eps(u2, s2)
    return base - sg(tn) / (2 / 3) * (h.expm1() / h - 1) * (e2 - e)


def t_dpm_fast(m, x, sig):
    smin = sig[-1] if sig[-1] != 0 else sig[-2]
    nfe = len(sig) - 1
    mm = nfe // 3 + 1
    ts = torch.linspace(float(-sig[0].log()), float(-smin.log()), mm + 1)
    orders = [3] * (mm - 2) + [2, 1] if nfe % 3 == 0 else [3] * (mm - 1) + [nfe % 3]
    for i, o in enumerate(orders):
        x = _dpm_step(m, x, ts[i], ts[i + 1], o)
    return x


# ---- comparisons ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3)) * 8.0
    sig = karras_sigmas(9, 0.05, 8.0).float()
    return default_sampler_registry(), x, sig


CASES = {
    "euler_cfg_pp": lambda m, x, s: t_euler_ancestral_cfg_pp(m, x, s, eta=0.0, s_noise=0.0),
    "euler_ancestral_cfg_pp": t_euler_ancestral_cfg_pp,
    "dpmpp_2s_ancestral_cfg_pp": t_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_2m_cfg_pp": t_dpmpp_2m_cfg_pp,
    "heunpp2": t_heunpp2,
    "ipndm": lambda m, x, s: t_ipndm(m, x, s, variable=False),
    "ipndm_v": lambda m, x, s: t_ipndm(m, x, s, variable=True),
    "deis": t_deis,
    "res_multistep": lambda m, x, s: t_res_multistep(m, x, s, 0.0, False),
    "res_multistep_cfg_pp": lambda m, x, s: t_res_multistep(m, x, s, 0.0, True),
    "res_multistep_ancestral": lambda m, x, s: t_res_multistep(m, x, s, 1.0, False),
    "res_multistep_ancestral_cfg_pp": lambda m, x, s: t_res_multistep(m, x, s, 1.0, True),
    "gradient_estimation": lambda m, x, s: t_gradient_estimation(m, x, s, False),
    "gradient_estimation_cfg_pp": lambda m, x, s: t_gradient_estimation(m, x, s, True),
    "er_sde": t_er_sde,
    "seeds_2": lambda m, x, s: t_seeds(m, x, s, (0.5,)),
    "seeds_3": lambda m, x, s: t_seeds(m, x, s, (1 / 3, 2 / 3)),
    "dpm_fast": t_dpm_fast,
}


@pytest.mark.parametrize("name", list(CASES))
def test_sampler_matches_comfyui_transcription(setup, name):
    reg, x, sig = setup
    spec = reg.get(name)
    ours = spec(Toy(), x, sig, noise=spec.make_noise(x, sig, SEED))
    want = CASES[name](Toy(), x, sig)
    torch.testing.assert_close(ours, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("pece", [False, True])
def test_sa_solver_matches_transcription(setup, pece):
    reg, x, sig = setup
    window = lambda s: 1.0 if 0.5 <= s <= 4.0 else 0.0  # noqa: E731 - stochastic in the middle only
    spec = reg.get("sa_solver_pece" if pece else "sa_solver")
    ours = spec(Toy(), x, sig, noise=spec.make_noise(x, sig, SEED), tau_func=window)
    want = t_sa_solver(Toy(), x, sig, window, pece)
    torch.testing.assert_close(ours, want, rtol=2e-4, atol=2e-4)


def test_dpm_adaptive_with_a_loose_tolerance_accepts_every_step_and_grows_h(setup):
    """With a huge tolerance every proposal is accepted and the PID factor is 1 + atan(1/err − 1) =
    1 + pi/2 (err ≈ 0): DPM-Solver-3 steps of h_init·(1 + pi/2)^k in lambda, the last one cut at
    the smallest positive sigma."""
    reg, x, sig = setup
    out = reg.get("dpm_adaptive")(Toy(), x, sig, rtol=1e6, atol=1e6, h_init=0.5)
    t, t_end, h, want = -sig[0].double().log(), -sig[-2].double().log(), 0.5, x.clone()
    while t < t_end - 1e-5:
        tn = torch.minimum(t_end, t + h)
        want = _dpm_step(Toy(), want, t, tn, 3)
        h *= 1 + math.pi / 2
        t = tn
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)


def test_ipndm_v_weights_against_adams_bashforth():
    """Order 2 is exact variable-step AB2 and order 3 on a uniform grid is AB3. ComfyUI's order-3
    weights on non-uniform grids and its order-4 weights even on a uniform grid are not the
    Adams-Bashforth ones (57/24, -65/24, 43/24, -11/24 instead of 55/24, -59/24, 37/24, -9/24),
    and on grids that are not geometric they do not even sum to 1; ipndm_v follows ComfyUI there, not AB."""
    hs = [-1.2, -2.0, -3.0, -4.0]
    for got, want in zip(_ipndm_v_comfy(*hs[:2]), _ab_exact(hs[:2]), strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    assert _ipndm_v_comfy(-1.0, -1.0, -1.0) == pytest.approx([23 / 12, -16 / 12, 5 / 12])
    assert _ab_exact([-1.0] * 4) == pytest.approx([55 / 24, -59 / 24, 37 / 24, -9 / 24], abs=1e-6)
    assert _ipndm_v_comfy(-1.0, -1.0, -1.0, -1.0) == pytest.approx([57 / 24, -65 / 24, 43 / 24, -11 / 24])
    assert _ipndm_v_comfy(*hs[:3]) != pytest.approx(_ab_exact(hs[:3]), abs=1e-3)
    # Order 4 is consistent (weights summing to 1) only when h2/h3 = h1/h2, e.g. on a geometric grid.
    assert sum(_ipndm_v_comfy(-1.0, -2.0, -4.0, -8.0)) == pytest.approx(1.0)
    assert sum(_ipndm_v_comfy(*hs)) != pytest.approx(1.0, abs=1e-3)
    from engine.diffusion.sampling.samplers.ipndm import ipndm_v_weights

    sig = [8.0, 6.8, 4.8, 1.8, 0.6]
    assert list(ipndm_v_weights(sig, 3, 4)) == pytest.approx(_ipndm_v_comfy(-1.2, -3.0, -2.0, -1.2))
