"""comfy.samplers / comfy.sample / comfy.k_diffusion.sampling over diffgraph's sampling library: the lists
are the runtime's (a pack's sampler and scheduler included), and sampling through ComfyUI's functions gives
what diffgraph's own KSampler / SamplerCustom nodes give for the same seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.diffusion.sampling.ksampler import ksampler_sigmas
from engine.runtime import build_runtime
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.compat.nodes_packs import run, runtime_with_packs

CKPT = "tiny_sd1.safetensors"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("compat_sampling") / "models"
    write_tiny_checkpoint(models / "checkpoints" / CKPT, "sd1", seed=5)
    return models


def runtime_with(tmp_path: Path, models_dir: Path, packs: dict[str, str]):
    return runtime_with_packs(tmp_path, packs, models_dir)


def graph(sampler: dict, extra: dict | None = None) -> dict:
    """Loader, prompts and an empty latent feeding node "3" (the sampler under test)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": sampler,
        **(extra or {}),
    }


def ksampler_node(sampler_name: str, scheduler: str = "karras", seed: int = 7, denoise: float = 1.0) -> dict:
    return {
        "class_type": "KSampler",
        "inputs": {
            "model": ["4", 0],
            "seed": seed,
            "steps": 3,
            "cfg": 4.0,
            "sampler_name": sampler_name,
            "scheduler": scheduler,
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
            "denoise": denoise,
        },
    }


NATIVE_SAMPLER_PACK = """
from engine import api

def sample_half_euler(denoiser, x, sigmas, *, noise=None, callback=None):
    return x

api.register_sampler("native_identity", sample_half_euler)
NODE_CLASS_MAPPINGS = {}
"""

COMFY_SAMPLER_PACK = """
import torch
import comfy.samplers
from comfy.k_diffusion import sampling as k_diffusion_sampling

@torch.no_grad()
def sample_my_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    # Euler on the probability-flow ODE, written as ComfyUI packs write k-diffusion samplers.
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = k_diffusion_sampling.to_d(x, sigmas[i], denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x

comfy.samplers.KSampler.SAMPLERS.append("my_euler")  # the name first ...
k_diffusion_sampling.sample_my_euler = sample_my_euler  # ... the function after: ComfyUI looks it up late

def half_karras(n, sigma_min, sigma_max):
    return k_diffusion_sampling.get_sigmas_karras(n, sigma_min, sigma_max, rho=3.5)

comfy.samplers.KSampler.SAMPLERS = comfy.samplers.KSampler.SAMPLERS + ["rebound"]  # a rebinding registers too
k_diffusion_sampling.sample_rebound = sample_my_euler
comfy.samplers.SCHEDULER_HANDLERS["half_karras"] = comfy.samplers.SchedulerHandler(half_karras, use_ms=False)
comfy.samplers.SCHEDULER_NAMES.append("half_karras")

class Lists:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "test"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sampler": (comfy.samplers.KSampler.SAMPLERS,), "scheduler": (comfy.samplers.KSampler.SCHEDULERS,)}}

    def run(self, sampler, scheduler):
        return {"ui": {"samplers": list(comfy.samplers.KSampler.SAMPLERS), "schedulers": list(comfy.samplers.SCHEDULER_NAMES)}, "result": (sampler,)}

NODE_CLASS_MAPPINGS = {"Lists": Lists}
"""


def test_sampler_and_scheduler_lists_are_the_runtimes_including_pack_additions(tmp_path, models_dir):
    runtime = runtime_with(
        tmp_path, models_dir, {"a_native": NATIVE_SAMPLER_PACK, "b_comfy": COMFY_SAMPLER_PACK}
    )
    library = runtime.services["samplers"]
    import comfy.samplers

    assert {"native_identity", "my_euler", "rebound"} <= set(library.sampler_names())
    assert list(comfy.samplers.KSampler.SAMPLERS) == library.sampler_names()
    assert library.sampler_names() == comfy.samplers.SAMPLER_NAMES
    assert list(comfy.samplers.KSampler.SCHEDULERS) == library.scheduler_names()
    assert library.scheduler_names()[-1] == "half_karras"
    info = runtime.registry.node_info("KSampler")["input"]["required"]
    assert info["sampler_name"][0][-3:] == ["native_identity", "my_euler", "rebound"]
    assert info["scheduler"][0][-1] == "half_karras"
    result = run(
        runtime, {"1": {"class_type": "Lists", "inputs": {"sampler": "my_euler", "scheduler": "half_karras"}}}
    )
    assert result.ui_outputs["1"]["samplers"] == library.sampler_names()


def test_a_pack_sampler_in_comfyui_convention_runs_in_the_builtin_ksampler(tmp_path, models_dir):
    """The pack's hand-written Euler (ComfyUI's k-diffusion convention) through diffgraph's KSampler node
    equals diffgraph's own euler; the pack's scheduler is ComfyUI's karras with rho 3.5."""
    runtime = runtime_with(tmp_path, models_dir, {"comfy_sampler": COMFY_SAMPLER_PACK})
    mine = run(runtime, graph(ksampler_node("my_euler", "half_karras")))
    import comfy.samplers

    model = mine.output("4", 0)
    sigmas = comfy.samplers.calculate_sigmas(model.model_sampling, "half_karras", 3)
    expected = torch.linspace(0, 1, 3, dtype=torch.float64)
    lo, hi = model.model_sampling.sigma_min ** (1 / 3.5), model.model_sampling.sigma_max ** (1 / 3.5)
    assert torch.allclose(sigmas[:-1].double(), (hi + expected * (lo - hi)) ** 3.5, rtol=1e-5)
    reference = build_runtime(runtime.folders, load_custom_nodes=False)
    # The same schedule for diffgraph's euler: the pack's scheduler is not in the plain runtime, so compare
    # against karras with rho 3.5 through the built-in SamplerCustom (KSamplerSelect + KarrasScheduler).
    custom = {
        "class_type": "SamplerCustom",
        "inputs": {
            "model": ["4", 0],
            "add_noise": True,
            "noise_seed": 7,
            "cfg": 4.0,
            "positive": ["6", 0],
            "negative": ["7", 0],
            "sampler": ["10", 0],
            "sigmas": ["11", 0],
            "latent_image": ["5", 0],
        },
    }
    ms = model.model_sampling
    extra = {
        "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "11": {
            "class_type": "KarrasScheduler",
            "inputs": {"steps": 3, "sigma_max": ms.sigma_max, "sigma_min": ms.sigma_min, "rho": 3.5},
        },
    }
    theirs = run(reference, graph(custom, extra))
    assert torch.allclose(mine.output("3")["samples"], theirs.output("3")["samples"], atol=1e-5)


def test_calculate_sigmas_and_ksampler_sigmas_are_the_librarys(tmp_path, models_dir):
    runtime = runtime_with(tmp_path, models_dir, {})
    model = run(
        runtime, {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}}
    ).output("4", 0)
    library = runtime.services["samplers"]
    import comfy.samplers

    ms = model.model_sampling
    for scheduler in library.scheduler_names():
        ours = library.schedulers.sigmas(scheduler, ms, 7)
        assert torch.equal(comfy.samplers.calculate_sigmas(ms, scheduler, 7), ours), scheduler
    with pytest.raises(ValueError, match="invalid scheduler"):
        comfy.samplers.calculate_sigmas(ms, "no_such_scheduler", 7)
    sampler = comfy.samplers.KSampler(
        model, steps=6, device="cpu", sampler="dpm_2", scheduler="normal", denoise=0.5
    )
    expected = ksampler_sigmas(
        ms, "normal", 6, 0.5, schedulers=library.schedulers, sampler=library.sampler("dpm_2")
    )
    assert torch.equal(sampler.sigmas, expected) and len(expected) == 7
    fallback = comfy.samplers.KSampler(model, steps=2, device="cpu", sampler="nope", scheduler="nope")
    assert (fallback.sampler, fallback.scheduler) == (
        library.sampler_names()[0],
        library.scheduler_names()[0],
    )


COMFY_SAMPLE_PACK = """
import comfy.sample
import comfy.samplers
import comfy.k_diffusion.sampling

class ViaComfySample:
    RETURN_TYPES = ("LATENT", "LATENT", "LATENT")
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "latent": ("LATENT",), "seed": ("INT", {"default": 0})}}

    def run(self, model, positive, negative, latent, seed):
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
        steps = []
        out = comfy.sample.sample(model, noise, 3, 4.0, "euler_ancestral", "karras", positive, negative, samples,
                                  callback=lambda i, x0, x, total: steps.append((i, total)), seed=seed)
        assert steps == [(0, 3), (1, 3), (2, 3)], steps
        sigmas = comfy.samplers.calculate_sigmas(model.model_sampling, "karras", 3)
        custom = comfy.sample.sample_custom(model, noise, 4.0, comfy.samplers.sampler_object("euler_ancestral"),
                                            sigmas, positive, negative, samples, seed=seed)
        wrapped = comfy.samplers.KSAMPLER(comfy.k_diffusion.sampling.sample_euler_ancestral)
        via_function = comfy.sample.sample_custom(model, noise, 4.0, wrapped, sigmas, positive, negative, samples, seed=seed)
        return ({"samples": out}, {"samples": custom}, {"samples": via_function})

class SdeWithOwnNoise:
    # Impact-Pack's pattern: a KSAMPLER around k-diffusion's dpmpp_sde with its own Brownian noise sampler,
    # seeded from extra_args["seed"] over the whole schedule.
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "latent": ("LATENT",), "seed": ("INT", {"default": 0})}}

    def run(self, model, positive, negative, latent, seed):
        k = comfy.k_diffusion.sampling
        sigmas = comfy.samplers.calculate_sigmas(model.model_sampling, "karras", 3)

        def sample_dpmpp_sde(model, x, sigmas_, **kwargs):
            lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
            kwargs["noise_sampler"] = k.BrownianTreeNoiseSampler(x, lo, hi, seed=kwargs["extra_args"]["seed"], cpu=True)
            return k.sample_dpmpp_sde(model, x, sigmas_, **kwargs)

        samples = latent["samples"]
        noise = comfy.sample.prepare_noise(samples, seed)
        out = comfy.sample.sample_custom(model, noise, 4.0, comfy.samplers.KSAMPLER(sample_dpmpp_sde), sigmas,
                                         positive, negative, samples, seed=seed)
        return ({"samples": out},)

NODE_CLASS_MAPPINGS = {"ViaComfySample": ViaComfySample, "SdeWithOwnNoise": SdeWithOwnNoise}
"""


def test_comfy_sample_with_prepare_noise_equals_the_builtin_ksampler(tmp_path, models_dir):
    """prepare_noise gives the initial noise diffgraph's KSampler draws for the seed: sampling with it through
    comfy.sample.sample, sample_custom with sampler_object, and a KSAMPLER around the k-diffusion function
    (whose own per-step noise comes from extra_args["seed"]) all equal the KSampler node."""
    runtime = runtime_with(tmp_path, models_dir, {"comfy_sample": COMFY_SAMPLE_PACK})
    node = {
        "class_type": "ViaComfySample",
        "inputs": {
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent": ["5", 0],
            "seed": 11,
        },
    }
    result = run(runtime, graph(ksampler_node("euler_ancestral", seed=11), {"9": node}))
    reference = result.output("3")["samples"]
    for index in range(3):
        assert torch.allclose(result.output("9", index)["samples"], reference, atol=1e-6), index
    sde = {
        "class_type": "SdeWithOwnNoise",
        "inputs": {
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent": ["5", 0],
            "seed": 11,
        },
    }
    both = run(runtime, graph(ksampler_node("dpmpp_sde", seed=11), {"9": sde}))
    assert torch.allclose(both.output("9")["samples"], both.output("3")["samples"], atol=1e-5)


GUIDER_PACK = """
import comfy.samplers

class ManualCFGGuider(comfy.samplers.CFGGuider):
    def predict_noise(self, x, timestep, model_options={}, seed=None):
        self.seen_sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        cond, uncond = comfy.samplers.calc_cond_batch(
            self.inner_model, [self.conds["positive"], self.conds["negative"]], x, timestep, model_options)
        return comfy.samplers.cfg_function(self.inner_model, cond, uncond, self.cfg, x, timestep, model_options)

class ManualGuider:
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "cfg": ("FLOAT", {"default": 8.0})}}

    def get_guider(self, model, positive, negative, cfg):
        guider = ManualCFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return (guider,)

class ManualSample:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"guider": ("GUIDER",), "sigmas": ("SIGMAS",), "latent": ("LATENT",)}}

    def sample(self, guider, sigmas, latent):
        import comfy.sample
        noise = comfy.sample.prepare_noise(latent["samples"], 3)
        out = guider.sample(noise, latent["samples"], comfy.samplers.sampler_object("euler"), sigmas, seed=3)
        assert torch.equal(guider.seen_sigmas.cpu(), sigmas)  # ComfyUI's transformer_options["sample_sigmas"]
        return ({"samples": out},)

import torch
NODE_CLASS_MAPPINGS = {"ManualGuider": ManualGuider, "ManualSample": ManualSample}
"""


def test_a_pack_guider_overriding_predict_noise_runs_in_sampler_custom_advanced(tmp_path, models_dir):
    runtime = runtime_with(tmp_path, models_dir, {"guider_pack": GUIDER_PACK})

    def advanced(guider: list) -> dict:
        return {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["12", 0],
                "guider": guider,
                "sampler": ["10", 0],
                "sigmas": ["11", 0],
                "latent_image": ["5", 0],
            },
        }

    extra = {
        "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "11": {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["4", 0], "scheduler": "normal", "steps": 3, "denoise": 1.0},
        },
        "12": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "13": {
            "class_type": "ManualGuider",
            "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "cfg": 4.0},
        },
        "14": {
            "class_type": "CFGGuider",
            "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "cfg": 4.0},
        },
        "15": advanced(["14", 0]),
        "16": {
            "class_type": "ManualSample",
            "inputs": {"guider": ["13", 0], "sigmas": ["11", 0], "latent": ["5", 0]},
        },
    }
    result = run(runtime, graph(advanced(["13", 0]), extra))
    mine, builtin = result.output("3")["samples"], result.output("15")["samples"]
    # The same guidance, evaluated per conditioning instead of in one cond/uncond batch: float32 rounding
    # (compared in the model's space: LATENTs are raw VAE latents, 1 / 0.18215 times larger).
    assert torch.allclose(mine * 0.18215, builtin * 0.18215, rtol=1e-4, atol=1e-4)
    assert not torch.equal(mine, result.output("5")["samples"])
    assert torch.equal(result.output("16")["samples"], mine)  # the guider's own sample(): the same run
