"""LATENT values hold raw VAE latents, as ComfyUI's: the VAE neither scales nor shifts, the sampler maps
the latent into the model's space (latent_format.process_in) and the result back (process_out).

The pipeline tests pin that moving the scale from the VAE to the sampler changed no image: each workflow
is also run by hand in the old convention (latents kept in model space: encode · scale, sampling on
those, decode of result / scale) and the decoded images agree to float rounding."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors import safe_open

from engine.diffusion.models.latent_formats import IDENTITY
from engine.diffusion.sampling import ksampler
from engine.folders import Folders
from engine.handles import load_checkpoint_handles
from engine.memory.devices import MemoryOptions, select_device
from engine.memory.manager import ModelManager
from engine.runtime import sampling_library
from tests.factories.checkpoints import write_tiny_checkpoint
from tests.unit.nodes.node_support import builtin, node_context

C, CS, L, LA, S, V = (
    builtin(name)
    for name in ("conditioning", "custom_sampling", "latent", "latent_advanced", "sampling", "vae_nodes")
)
SCALE = {"sd1": 0.18215, "sdxl": 0.13025}


def _load(tmp_path_factory: Any, family: str, *, inpaint: bool = False) -> tuple[Any, ...]:
    path = write_tiny_checkpoint(
        tmp_path_factory.mktemp("ck") / f"{family}.safetensors", family, seed=2, inpaint=inpaint
    )
    model, clip, vae = load_checkpoint_handles(path, manager=ModelManager(select_device(MemoryOptions())))
    pos = C.clip_text_encode(text="a red house", clip=clip)[0]
    neg = C.clip_text_encode(text="", clip=clip)[0]
    return model, vae, pos, neg


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def tiny(request: Any, tmp_path_factory: Any) -> tuple[Any, ...]:
    return (request.param, *_load(tmp_path_factory, request.param))


@pytest.fixture(scope="module")
def sd1(tmp_path_factory: Any) -> tuple[Any, ...]:
    return _load(tmp_path_factory, "sd1")


@pytest.fixture(scope="module")
def sd1_inpaint(tmp_path_factory: Any) -> tuple[Any, ...]:
    return _load(tmp_path_factory, "sd1", inpaint=True)


def _image(seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))


def _ks(model: Any, pos: Any, neg: Any, latent: dict[str, Any], **kw: Any) -> dict[str, Any]:
    args = dict(seed=5, steps=3, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    args.update(kw)
    out = S.ksampler(
        model=model, positive=pos, negative=neg, latent_image=latent, context=node_context()[0], **args
    )
    return dict(out[0])


# ---- the old convention, by hand --------------------------------------------------------------------


def _old_encode(vae: Any, image: torch.Tensor, scale: float) -> torch.Tensor:
    return vae.encode(image) * scale


def _old_decode(vae: Any, latent: torch.Tensor, scale: float) -> torch.Tensor:
    return vae.decode(latent / scale)


def _old_ksample(
    model: Any, pos: Any, neg: Any, latent: torch.Tensor, *, denoise: float = 1.0, mask: Any = None
) -> torch.Tensor:
    """KSampler on a latent already in model space: the sampler applies no latent format."""
    lib = sampling_library()
    noise = ksampler.prepare_noise(latent.float().cpu(), 5, None)
    with model.use():
        dm = model.diffusion_model()
        dm.latent_format = IDENTITY
        out = ksampler.sample(
            dm, noise.to(model.device), 3, 4.0, "euler", "normal", pos, neg, latent.to(model.device),
            denoise=denoise, noise_mask=mask, seed=5, samplers=lib.samplers, schedulers=lib.schedulers,
            model_options=model.sampling_options(),
        )  # fmt: skip
    return out.cpu()


def _same_image(new: torch.Tensor, old: torch.Tensor) -> None:
    assert new.shape == old.shape
    torch.testing.assert_close(new, old, atol=2e-5, rtol=1e-5)


# ---- VAE ------------------------------------------------------------------------------------------


def test_vae_encode_gives_the_raw_encoder_mean_and_decode_takes_it(tiny: tuple[Any, ...]) -> None:
    """Fails on the old code, whose VAEEncode returned the mean times the family's scale factor."""
    _, _, vae, _, _ = tiny
    image = _image(1)
    (latent,) = V.vae_encode(pixels=image, vae=vae)
    module = vae.module
    with torch.no_grad():
        pixels = image.movedim(-1, 1) * 2.0 - 1.0
        mean = module.quant_conv(module.encoder(pixels)).chunk(2, dim=1)[0]
        decoded = module.decoder(module.post_quant_conv(latent["samples"]))
    torch.testing.assert_close(latent["samples"], mean, atol=1e-6, rtol=1e-6)
    (image_out,) = V.vae_decode(samples=latent, vae=vae)
    torch.testing.assert_close(
        image_out, ((decoded + 1) / 2).clamp(0, 1).movedim(1, -1), atol=1e-6, rtol=1e-6
    )


def test_save_latent_file_holds_the_raw_latent(tiny: tuple[Any, ...], tmp_path: Any) -> None:
    """ComfyUI's file format; fails on the old code for SDXL (it wrote the SDXL latent · 0.13025 / 0.18215)."""
    _, _, vae, _, _ = tiny
    folders = Folders.create(tmp_path)
    folders.create_directories()
    context, _ = node_context(folders=folders)
    image = _image(2)
    (latent,) = V.vae_encode(pixels=image, vae=vae)
    LA.save_latent(latent, "raw", context)
    module = vae.module
    with torch.no_grad():
        mean = module.quant_conv(module.encoder(image.movedim(-1, 1) * 2.0 - 1.0)).chunk(2, dim=1)[0]
    with safe_open(str(folders.output / "raw_00001_.latent"), "pt") as handle:
        torch.testing.assert_close(handle.get_tensor("latent_tensor"), mean, atol=1e-6, rtol=1e-6)


# ---- whole pipelines: the same images as before ------------------------------------------------------


def test_txt2img_and_img2img_decode_to_the_same_images(tiny: tuple[Any, ...]) -> None:
    family, model, vae, pos, neg = tiny
    s = SCALE[family]
    (empty,) = L.empty_latent_image(width=16, height=16, batch_size=1)
    new = _ks(model, pos, neg, empty)["samples"]
    old = _old_ksample(model, pos, neg, empty["samples"])
    # The LATENT is the model's result mapped back to raw (fails on the old code: it was `old` itself).
    torch.testing.assert_close(new, old / s)
    _same_image(V.vae_decode(samples={"samples": new}, vae=vae)[0], _old_decode(vae, old, s))

    image = _image(3)
    (encoded,) = V.vae_encode(pixels=image, vae=vae)
    new = _ks(model, pos, neg, encoded, denoise=0.6)["samples"]
    old = _old_ksample(model, pos, neg, _old_encode(vae, image, s), denoise=0.6)
    torch.testing.assert_close(new, old / s)
    _same_image(V.vae_decode(samples={"samples": new}, vae=vae)[0], _old_decode(vae, old, s))


def test_masked_inpaint_and_hires_fix_decode_to_the_same_images(sd1: tuple[Any, ...]) -> None:
    model, vae, pos, neg = sd1
    s = SCALE["sd1"]
    image = _image(4)
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1.0
    (encoded,) = V.vae_encode(pixels=image, vae=vae)
    (masked,) = L.set_latent_noise_mask(samples=encoded, mask=mask)
    new = _ks(model, pos, neg, masked)["samples"]
    old = _old_ksample(model, pos, neg, _old_encode(vae, image, s), mask=masked["noise_mask"])
    _same_image(V.vae_decode(samples={"samples": new}, vae=vae)[0], _old_decode(vae, old, s))

    (empty,) = L.empty_latent_image(width=16, height=16, batch_size=1)
    first = _ks(model, pos, neg, empty)
    (bigger,) = L.latent_upscale_by(samples=first, upscale_method="bilinear", scale_by=1.5)
    new = _ks(model, pos, neg, bigger, denoise=0.5)["samples"]
    old_first = _old_ksample(model, pos, neg, empty["samples"])
    (old_bigger,) = L.latent_upscale_by(
        samples={"samples": old_first}, upscale_method="bilinear", scale_by=1.5
    )
    old = _old_ksample(model, pos, neg, old_bigger["samples"], denoise=0.5)
    _same_image(V.vae_decode(samples={"samples": new}, vae=vae)[0], _old_decode(vae, old, s))


def test_inpainting_model_paths_decode_to_the_same_images(sd1_inpaint: tuple[Any, ...]) -> None:
    """VAEEncodeForInpaint feeds the masked latent through the sampler's input; InpaintModelConditioning
    through the conditioning's concat_latent_image, which the model maps into its space itself."""
    model, vae, pos, neg = sd1_inpaint
    s = SCALE["sd1"]
    image = _image(5)
    mask = torch.zeros(1, 16, 16)
    mask[:, 2:10, 6:14] = 1.0
    (for_inpaint,) = V.vae_encode_for_inpaint(pixels=image, vae=vae, mask=mask, grow_mask_by=2)
    new = _ks(model, pos, neg, for_inpaint)["samples"]
    old_latent = for_inpaint["samples"] * s
    old = _old_ksample(model, pos, neg, old_latent, mask=for_inpaint["noise_mask"])
    _same_image(V.vae_decode(samples={"samples": new}, vae=vae)[0], _old_decode(vae, old, s))

    p2, n2, latent = V.inpaint_model_conditioning(
        positive=pos, negative=neg, vae=vae, pixels=image, mask=mask, noise_mask=True
    )
    new = _ks(model, p2, n2, latent)["samples"]

    def old_style(conditioning: Any) -> list[list[Any]]:
        return [
            [c[0], {**c[1], "concat_latent_image": c[1]["concat_latent_image"] * s}] for c in conditioning
        ]

    old = _old_ksample(model, old_style(p2), old_style(n2), latent["samples"] * s, mask=latent["noise_mask"])
    _same_image(V.vae_decode(samples={"samples": new}, vae=vae)[0], _old_decode(vae, old, s))


# ---- what the model sees ------------------------------------------------------------------------------


def _recording(model: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A clone whose model calls are recorded through ComfyUI's unet function wrapper."""
    seen: list[dict[str, Any]] = []

    def wrapper(apply_model: Any, args: dict[str, Any]) -> torch.Tensor:
        seen.append({"input": args["input"].clone(), "c_concat": args["c"].get("c_concat")})
        return apply_model(args["input"], args["timestep"], **args["c"])  # type: ignore[no-any-return]

    clone = model.clone()
    clone.set_model_unet_function_wrapper(wrapper)
    return clone, seen


def test_noise_a_pack_adds_to_a_latent_reaches_the_model_scaled(sd1: tuple[Any, ...]) -> None:
    """A pack adding `strength · noise` to LATENT samples moves the model's input by
    `strength · noise · 0.18215`, as in ComfyUI (fails on the old code: there it moved by the full amount)."""
    model, vae, pos, neg = sd1
    (encoded,) = V.vae_encode(pixels=_image(6), vae=vae)
    extra = 0.5 * torch.randn(encoded["samples"].shape, generator=torch.Generator().manual_seed(9))
    noisy = {"samples": encoded["samples"] + extra}
    clone, seen = _recording(model)
    common = dict(model=clone, noise_seed=1, steps=4, cfg=1.0, sampler_name="euler", scheduler="normal",
                  positive=pos, negative=neg, start_at_step=2, end_at_step=3,
                  return_with_leftover_noise="enable", context=node_context()[0])  # fmt: skip
    S.ksampler_advanced(add_noise="disable", latent_image=encoded, **common)
    S.ksampler_advanced(add_noise="disable", latent_image=noisy, **common)
    (clean, moved) = (seen[0]["input"], seen[-1]["input"])
    torch.testing.assert_close(clean, encoded["samples"] * 0.18215)
    torch.testing.assert_close(moved - clean, extra * 0.18215, atol=1e-5, rtol=1e-5)


def test_concat_latent_image_is_mapped_into_model_space(sd1_inpaint: tuple[Any, ...]) -> None:
    model, vae, pos, neg = sd1_inpaint
    mask = torch.zeros(1, 16, 16)
    mask[:, :8] = 1.0
    p2, n2, latent = V.inpaint_model_conditioning(
        positive=pos, negative=neg, vae=vae, pixels=_image(7), mask=mask, noise_mask=True
    )
    clone, seen = _recording(model)
    _ks(clone, p2, n2, latent, steps=1)
    concat = seen[0]["c_concat"]
    expected = p2[0][1]["concat_latent_image"] * 0.18215
    torch.testing.assert_close(concat[:1, 1:], expected, atol=1e-6, rtol=1e-6)


def test_custom_sampler_outputs_are_raw_latents(sd1: tuple[Any, ...]) -> None:
    """SamplerCustomAdvanced maps both outputs back to raw: `output` equals KSampler's and
    `denoised_output` (the last x0 estimate, which euler's last step to sigma 0 returns) equals it too."""
    model, _, pos, neg = sd1
    (empty,) = L.empty_latent_image(width=16, height=16, batch_size=1)
    context = node_context()[0]
    (guider,) = CS.cfg_guider(model=model, positive=pos, negative=neg, cfg=4.0)
    (sampler,) = CS.ksampler_select(sampler_name="euler", context=context)
    (sigmas,) = CS.basic_scheduler(model=model, scheduler="normal", steps=3, denoise=1.0, context=context)
    (noise,) = CS.random_noise(noise_seed=5)
    out, denoised = CS.sampler_custom_advanced(
        noise=noise, guider=guider, sampler=sampler, sigmas=sigmas, latent_image=empty, context=context
    )
    reference = _ks(model, pos, neg, empty)["samples"]
    torch.testing.assert_close(out["samples"], reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(denoised["samples"], out["samples"], atol=1e-5, rtol=1e-5)
