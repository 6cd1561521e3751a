"""Schedule and sigma nodes against their formulas worked by hand and the published tables, and AddNoise."""

from __future__ import annotations

import math

import pytest
import torch

from engine.handles import load_checkpoint_handles
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin

SC, CS = builtin("custom_schedulers"), builtin("custom_sampling")
AYS_SD1 = [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092]
AYS_SD1 += [0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582]


def values(sigmas: torch.Tensor) -> list[float]:
    return [float(v) for v in sigmas]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "sd1.safetensors", "sd1", seed=2)
    model, _, _ = load_checkpoint_handles(path, manager=ModelManager(select_device(MemoryOptions())))
    return model


def test_polyexponential_by_hand():
    (sigmas,) = SC.polyexponential_scheduler(3, math.e**2, 1.0, 1.0)
    assert values(sigmas) == pytest.approx([math.e**2, math.e, 1.0, 0.0], rel=1e-6)
    (squared,) = SC.polyexponential_scheduler(3, math.e**2, 1.0, 2.0)  # ramp (1, 1/2, 0)² in log space
    assert values(squared) == pytest.approx([math.e**2, math.e**0.5, 1.0, 0.0], rel=1e-6)


def test_laplace_by_hand_without_a_final_zero():
    (sigmas,) = SC.laplace_scheduler(3, 100.0, 0.01, 0.0, 0.5)
    # t = 0: log σ = −0.5·log(1e-5) = 5.76 -> clamped to 100; t = 1/2: sign 0 -> σ = 1; t = 1: clamped to 0.01.
    assert values(sigmas) == pytest.approx([100.0, 1.0, 0.01], rel=1e-6)
    (shifted,) = SC.laplace_scheduler(5, 1e4, 1e-4, 1.0, 0.5)
    # t = 1/4 (second point): log σ = mu − beta·log(1 − 2·|1/2 − 1/4| + 1e-5); t = 1/2: σ = e^mu.
    assert float(shifted[1]) == pytest.approx(math.exp(1.0 - 0.5 * math.log(0.5 + 1e-5)), rel=1e-6)
    assert float(shifted[2]) == pytest.approx(math.e, rel=1e-6)


def test_vp_by_hand():
    (sigmas,) = SC.vp_scheduler(2, 19.9, 0.1, 0.001)
    first = math.sqrt(math.expm1(19.9 / 2 + 0.1))
    last = math.sqrt(math.expm1(19.9 * 1e-6 / 2 + 0.1 * 1e-3))
    assert values(sigmas) == pytest.approx([first, last, 0.0], rel=1e-5)


def test_align_your_steps_table_resampling_and_denoise():
    (ten,) = SC.align_your_steps_scheduler("SD1", 10, 1.0)
    assert values(ten) == pytest.approx(AYS_SD1[:-1] + [0.0], rel=1e-6)
    # 5 steps: 6 points evenly placed on the 11-point log table fall on every other entry.
    (five,) = SC.align_your_steps_scheduler("SD1", 5, 1.0)
    assert values(five) == pytest.approx(AYS_SD1[0:-1:2] + [0.0], rel=1e-5)
    (half,) = SC.align_your_steps_scheduler("SDXL", 10, 0.5)  # the last 5 steps of the 10
    (full,) = SC.align_your_steps_scheduler("SDXL", 10, 1.0)
    assert values(half)[:-1] == pytest.approx(values(full)[5:-1]) and float(half[-1]) == 0.0
    assert SC.align_your_steps_scheduler("SVD", 10, 0.0)[0].numel() == 0
    # 14 steps: level 1 sits at 1/14 of the way, 10/14 of the first table interval, linear in log σ.
    (fourteen,) = SC.align_your_steps_scheduler("SD1", 14, 1.0)
    lo, hi = math.log(AYS_SD1[1]), math.log(AYS_SD1[0])
    assert float(fourteen[1]) == pytest.approx(math.exp(hi + (lo - hi) * (10 / 14)), rel=1e-6)


def test_gits_tables():
    (ten,) = SC.gits_scheduler(1.2, 10, 1.0)
    assert len(ten) == 11 and float(ten[0]) == pytest.approx(14.61464119) and float(ten[-1]) == 0.0
    assert values(ten)[:-1] == pytest.approx(SC.GITS[120][8][:-1])
    (two,) = SC.gits_scheduler(0.8, 2, 1.0)
    assert values(two) == pytest.approx([14.61464119, 7.49001646, 0.0])
    (many,) = SC.gits_scheduler(1.5, 30, 1.0)
    assert len(many) == 31 and float(many[0]) == pytest.approx(14.61464119)
    assert all(a > b for a, b in zip(values(many), values(many)[1:], strict=False))
    with pytest.raises(ValueError, match="coeff"):
        SC.gits_scheduler(1.23, 10, 1.0)


def test_optimal_steps_table():
    (flux,) = SC.optimal_steps_scheduler("FLUX", 10, 1.0)
    assert values(flux)[:-1] == pytest.approx(
        [0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808]
    )
    (wan,) = SC.optimal_steps_scheduler("Wan", 20, 0.5)
    assert len(wan) == 11 and float(wan[0]) == pytest.approx(0.973)


def test_split_set_extend_sigmas():
    sigmas = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    high, low = SC.split_sigmas_denoise(sigmas, 0.4)  # 5 steps -> the last 2 are low
    assert values(high) == [5, 4, 3, 2] and values(low) == [2, 1, 0]
    high, low = SC.split_sigmas_denoise(sigmas, 0.0)
    assert values(high) == [] and values(low) == [0]
    (first,) = SC.set_first_sigma(sigmas, 136.0)
    assert values(first) == [136, 4, 3, 2, 1, 0] and float(sigmas[0]) == 5.0
    (linear,) = SC.extend_intermediate_sigmas(torch.tensor([10.0, 6.0, 2.0, 0.0]), 2, -1.0, 5.0, "linear")
    assert values(linear) == [10, 8, 6, 4, 2, 0]
    (eased,) = SC.extend_intermediate_sigmas(torch.tensor([10.0, 4.0]), 3, 20.0, 0.0, "cosine")
    assert values(eased) == pytest.approx([10, 10 - 6 * 0.5, 10 - 6 * math.sin(math.pi / 3), 4])
    (sine,) = SC.extend_intermediate_sigmas(torch.tensor([10.0, 4.0]), 2, 5.0, 0.0, "sine")
    assert values(sine) == [10, 4]  # 10 is above start_at_sigma: not extended


def test_beta_and_percent_nodes_use_the_models_schedule(tiny_model):
    ms = tiny_model.model_sampling
    (beta,) = SC.beta_sampling_scheduler(tiny_model, 6, 0.6, 0.6)
    assert len(beta) == 7 and float(beta[0]) == pytest.approx(float(ms.sigma_max), rel=1e-5)
    assert float(beta[-1]) == 0.0
    (other,) = SC.beta_sampling_scheduler(tiny_model, 6, 2.0, 0.5)
    assert not torch.allclose(beta, other)
    (mid,) = SC.sampling_percent_to_sigma(tiny_model, 0.5, False)
    assert mid == pytest.approx(float(ms.percent_to_sigma(0.5)))
    assert SC.sampling_percent_to_sigma(tiny_model, 0.0, True)[0] == pytest.approx(float(ms.sigma_max))
    assert SC.sampling_percent_to_sigma(tiny_model, 1.0, True)[0] == pytest.approx(float(ms.sigma_min))
    assert SC.sampling_percent_to_sigma(tiny_model, 0.0, False)[0] > float(ms.sigma_max)


def test_add_noise_scales_the_seeded_noise_by_the_schedule_span(tiny_model):
    latent = {"samples": torch.full((1, 4, 4, 4), 0.25), "batch_index": [0]}
    (noise,) = CS.random_noise(11)
    sigmas = torch.tensor([3.0, 1.0, 0.5])
    (out,) = SC.add_noise(tiny_model, noise, sigmas, latent)
    drawn = noise.generate(latent)
    torch.testing.assert_close(out["samples"], 0.25 + 2.5 * drawn)  # |3 − 0.5| · n
    assert out["batch_index"] == [0]
    (single,) = SC.add_noise(tiny_model, noise, torch.tensor([2.0]), latent)
    torch.testing.assert_close(single["samples"], 0.25 + 2.0 * drawn)
    assert SC.add_noise(tiny_model, noise, torch.tensor([]), latent)[0] is latent
    (quiet,) = SC.add_noise(tiny_model, CS.disable_noise()[0], sigmas, latent)
    torch.testing.assert_close(quiet["samples"], latent["samples"])
